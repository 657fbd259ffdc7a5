//! Client connections: both ends of each, in order with latency, and the calls into the
//! simulated clients.

use crate::codec::{self, ServerFrame};
use crate::core::{ConnId, NodeId, SharedBytes};
use crate::driver::conn::InBuf;
use crate::sim::client::{ClientEnv, ClientOut, SimClient};
use crate::sim::clock::Micros;

use super::{ConnInfo, Event, Input, NodeSide, World, TAG_CLIENT, TAG_TO_CLIENT};

impl World {
    pub(super) fn client_latency(&mut self) -> Micros {
        let (lo, hi) = self.cfg.client_latency;
        self.net_rng.u64(lo..=hi)
    }

    pub(super) fn send_to_client(&mut self, node: NodeId, conn: ConnId, bytes: SharedBytes) {
        let lat = self.client_latency();
        let now = self.clock.micros();
        let Some(ci) = self.conns.get_mut(&conn) else {
            return;
        };
        if ci.node != node || ci.node_side != NodeSide::Open {
            return;
        }
        let at = (now + lat).max(ci.to_client_at);
        ci.to_client_at = at;
        self.schedule(at, Event::ToClient { conn, bytes });
    }

    /// The node closed `conn`: it learns at once (as the driver tells it), the client after
    /// what was queued for it.
    pub(super) fn node_closes(&mut self, id: NodeId, conn: ConnId) -> bool {
        let now = self.now_of(id);
        let Some(ci) = self.conns.get(&conn) else {
            return false;
        };
        if ci.node != id || ci.node_side != NodeSide::Open {
            return false;
        }
        if let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.node.as_mut()) {
            node.handle_disconnect(now, conn);
        }
        self.close_node_side(conn);
        true
    }

    /// Node `id` is gone: the node side of each of its client connections closes.
    pub(super) fn close_node_sides(&mut self, id: NodeId) {
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, ci)| ci.node == id && ci.node_side != NodeSide::Closed)
            .map(|(&c, _)| c)
            .collect();
        for conn in conns {
            self.close_node_side(conn);
        }
    }

    /// The node side of `conn` is gone; the client sees the close after the queued frames.
    pub(super) fn close_node_side(&mut self, conn: ConnId) {
        let lat = self.client_latency();
        let now = self.clock.micros();
        let Some(ci) = self.conns.get_mut(&conn) else {
            return;
        };
        if ci.node_side == NodeSide::Closed && !ci.client_open {
            return;
        }
        ci.node_side = NodeSide::Closed;
        let at = (now + lat).max(ci.to_client_at);
        ci.to_client_at = at;
        self.schedule(at, Event::ClientSeesClose { conn });
    }

    pub(super) fn with_client(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut SimClient, &mut ClientEnv<'_>),
    ) {
        let mut env = ClientEnv {
            now: self.clock.micros(),
            members: &self.targets,
            next_conn: &mut self.next_conn,
            out: Vec::new(),
            observed: Vec::new(),
            notes: Vec::new(),
        };
        f(&mut self.clients[i], &mut env);
        let ClientEnv {
            out,
            observed,
            notes,
            ..
        } = env;
        for n in notes {
            self.note(n);
        }
        for o in &observed {
            if let Err(v) = self.checker.observe(i, o) {
                self.fail(v);
            }
        }
        for o in out {
            self.client_out(i, o);
        }
    }

    pub(super) fn client_tick(&mut self, i: usize) {
        self.trace.mix(TAG_CLIENT);
        self.trace.mix(i as u64 ^ self.clock.micros());
        self.with_client(i, |c, env| c.tick(env));
    }

    pub(super) fn client_out(&mut self, client: usize, o: ClientOut) {
        let lat = self.client_latency();
        let now = self.clock.micros();
        match o {
            ClientOut::Connect { node, conn } => {
                self.conns.insert(
                    conn,
                    ConnInfo {
                        client,
                        node,
                        node_side: NodeSide::Pending,
                        client_open: true,
                        to_node_at: now + lat,
                        to_client_at: 0,
                        to_node: Vec::new(),
                        reading: false,
                        node_in: InBuf::new(),
                    },
                );
                let input = Input::Accept(conn);
                self.schedule(now + lat, Event::Input { node, input });
            }
            ClientOut::Send { conn, frame } => {
                let bytes = match codec::encode(&frame) {
                    Ok(b) => b,
                    Err(e) => return self.fail(format!("cannot encode {frame:?}: {e}")),
                };
                let Some(ci) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !ci.client_open {
                    return;
                }
                // A byte stream, as TCP: what is sent before the node reads arrives together,
                // and reads take it in pieces of any size (see `World::read_client`).
                ci.to_node.extend_from_slice(&bytes);
                if !ci.reading {
                    ci.reading = true;
                    let at = (now + lat).max(ci.to_node_at);
                    ci.to_node_at = at;
                    let node = ci.node;
                    self.schedule(
                        at,
                        Event::Input {
                            node,
                            input: Input::Readable(conn),
                        },
                    );
                }
            }
            ClientOut::Close { conn } => {
                let Some(ci) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !ci.client_open {
                    return;
                }
                ci.client_open = false;
                let at = (now + lat).max(ci.to_node_at);
                ci.to_node_at = at;
                let node = ci.node;
                self.schedule(
                    at,
                    Event::Input {
                        node,
                        input: Input::Closed(conn),
                    },
                );
            }
        }
    }

    pub(super) fn deliver_to_client(&mut self, conn: ConnId, bytes: SharedBytes) {
        let Some(ci) = self.conns.get(&conn) else {
            return;
        };
        if !ci.client_open {
            return;
        }
        let i = ci.client;
        self.trace.event(TAG_TO_CLIENT, self.clock.micros(), &bytes);
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match codec::decode::<ServerFrame>(rest) {
                Ok(Some((f, used))) => {
                    frames.push(f);
                    rest = &rest[used..];
                }
                other => {
                    return self.fail(format!(
                        "conn {}: undecodable or partial server frame: {other:?}",
                        conn.0
                    ))
                }
            }
        }
        for f in frames {
            let mut result = Ok(());
            self.with_client(i, |c, env| result = c.on_frame(env, conn, f));
            if let Err(v) = result {
                return self.fail(v);
            }
        }
    }

    /// A client's connection breaks: both ends see it close.
    pub fn reset_client(&mut self, i: usize) {
        let Some(conn) = self.clients[i].conn() else {
            return;
        };
        self.with_client(i, |c, env| c.on_closed(env, conn));
        if let Some(ci) = self.conns.get_mut(&conn) {
            ci.client_open = false;
            let node = ci.node;
            let at = self.clock.micros() + 1;
            self.schedule(
                at,
                Event::Input {
                    node,
                    input: Input::Closed(conn),
                },
            );
        }
    }
}
