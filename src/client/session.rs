//! The client's session state, free of sockets so it can be unit-tested: the rooms joined with
//! the last sequence number seen in each, the next client sequence number, the `Say`s not yet
//! acknowledged (in send order), de-duplication of `Message` frames, and the resume plan a
//! reconnecting client replays on a new connection (DESIGN C5).

use std::collections::{BTreeMap, VecDeque};

use crate::codec::{ChatMessage, ClientFrame, Join, Say};

/// A `Say` sent but not yet acknowledged (or refused) by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSay {
    /// The client sequence number it was sent with; a re-send keeps it.
    pub client_seq: u64,
    /// Room posted to.
    pub room: String,
    /// Message text.
    pub text: String,
}

impl PendingSay {
    /// The frame that (re-)sends this message.
    pub fn frame(&self) -> ClientFrame {
        ClientFrame::Say(Say {
            room: self.room.clone(),
            client_seq: self.client_seq,
            text: self.text.clone(),
        })
    }
}

/// What the client knows about its session, independent of any connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// Room -> highest message seq seen (delivered to the user) in it.
    rooms: BTreeMap<String, u64>,
    next_client_seq: u64,
    unacked: VecDeque<PendingSay>,
    duplicates: u64,
    gaps: u64,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// An empty session: no rooms, client sequence numbers start at 1.
    pub fn new() -> Session {
        Session {
            rooms: BTreeMap::new(),
            next_client_seq: 1,
            unacked: VecDeque::new(),
            duplicates: 0,
            gaps: 0,
        }
    }

    /// True when `room` is joined.
    pub fn is_joined(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// The last seq seen in `room`, `None` if the room is not joined.
    pub fn last_seen(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).copied()
    }

    /// The joined rooms with their last seen seq, sorted by name.
    pub fn rooms(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.rooms.iter().map(|(r, s)| (r.as_str(), *s))
    }

    /// Records a completed join: `last_seq` is the room's highest seq at the join (everything up
    /// to it was replayed or is deliberately skipped), so later frames with seq <= it are dropped.
    pub fn joined(&mut self, room: &str, last_seq: u64) {
        let seen = self.rooms.entry(room.to_owned()).or_insert(0);
        *seen = (*seen).max(last_seq);
    }

    /// Records a completed leave.
    pub fn left(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// Decides whether a `Message` frame is new: `true` (and it becomes the last seen) when its
    /// room is joined and its seq is above the last seen; `false` for a duplicate (a replay
    /// after a resume) or a room not joined.
    pub fn accept_message(&mut self, m: &ChatMessage) -> bool {
        let Some(seen) = self.rooms.get_mut(&m.room) else {
            return false;
        };
        if m.seq <= *seen {
            self.duplicates += 1;
            return false;
        }
        if m.seq != *seen + 1 && *seen != 0 {
            self.gaps += 1;
        }
        *seen = m.seq;
        true
    }

    /// Allocates the next client sequence number for a message to `room` and remembers the
    /// message as unacknowledged. Returns the frame to send.
    pub fn say(&mut self, room: &str, text: &str) -> PendingSay {
        let pending = PendingSay {
            client_seq: self.next_client_seq,
            room: room.to_owned(),
            text: text.to_owned(),
        };
        self.next_client_seq += 1;
        self.unacked.push_back(pending.clone());
        pending
    }

    /// The `Say` with `client_seq` was acknowledged (or refused): forget it. `None` when it was
    /// not pending (e.g. a second answer to a re-sent message).
    pub fn settle(&mut self, client_seq: u64) -> Option<PendingSay> {
        let pos = self
            .unacked
            .iter()
            .position(|p| p.client_seq == client_seq)?;
        self.unacked.remove(pos)
    }

    /// Whether the `Say` with `client_seq` is still waiting for its answer.
    pub fn is_pending(&self, client_seq: u64) -> bool {
        self.unacked.iter().any(|p| p.client_seq == client_seq)
    }

    /// Messages sent and not yet answered, oldest first.
    pub fn unacked(&self) -> impl ExactSizeIterator<Item = &PendingSay> + '_ {
        self.unacked.iter()
    }

    /// Number of messages sent and not yet answered.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// The client sequence number the next message gets.
    pub fn next_client_seq(&self) -> u64 {
        self.next_client_seq
    }

    /// `Message` frames dropped as already seen (replays after a resume).
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    /// Times a room's seq jumped by more than one (a message the client never saw).
    pub fn gaps_seen(&self) -> u64 {
        self.gaps
    }

    /// The frames a new connection needs, after its `Hello` is welcomed, to resume this session:
    /// re-join every room asking only for messages after the last one seen, then re-send every
    /// unacknowledged message with its original client sequence number (the server answers a
    /// message it already committed with an `Ack` carrying the original seq).
    pub fn resume_frames(&self) -> Vec<ClientFrame> {
        let joins = self.rooms.iter().map(|(room, seen)| {
            ClientFrame::Join(Join {
                room: room.clone(),
                after_seq: Some(*seen),
            })
        });
        joins
            .chain(self.unacked.iter().map(PendingSay::frame))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, seq: u64) -> ChatMessage {
        ChatMessage {
            room: room.into(),
            seq,
            author: "bob".into(),
            time_ms: 1_000 * seq,
            text: format!("m{seq}"),
        }
    }

    #[test]
    fn messages_of_unjoined_rooms_are_not_accepted() {
        let mut s = Session::new();
        assert!(!s.accept_message(&msg("lobby", 1)));
        assert_eq!(s.last_seen("lobby"), None);
    }

    #[test]
    fn dedup_drops_seq_at_or_below_last_seen() {
        let mut s = Session::new();
        s.joined("lobby", 3);
        assert!(!s.accept_message(&msg("lobby", 2)));
        assert!(!s.accept_message(&msg("lobby", 3)));
        assert!(s.accept_message(&msg("lobby", 4)));
        assert!(!s.accept_message(&msg("lobby", 4)));
        assert!(s.accept_message(&msg("lobby", 5)));
        assert_eq!(s.last_seen("lobby"), Some(5));
        assert_eq!(s.duplicates_dropped(), 3);
        assert_eq!(s.gaps_seen(), 0);
    }

    #[test]
    fn rooms_are_deduplicated_independently() {
        let mut s = Session::new();
        s.joined("a", 0);
        s.joined("b", 10);
        assert!(s.accept_message(&msg("a", 1)));
        assert!(!s.accept_message(&msg("b", 1)));
        assert!(s.accept_message(&msg("b", 11)));
        assert_eq!(s.last_seen("a"), Some(1));
        assert_eq!(s.last_seen("b"), Some(11));
    }

    #[test]
    fn gaps_are_counted_but_accepted() {
        let mut s = Session::new();
        s.joined("a", 2);
        assert!(s.accept_message(&msg("a", 5)));
        assert_eq!(s.gaps_seen(), 1);
        assert_eq!(s.last_seen("a"), Some(5));
    }

    #[test]
    fn rejoin_never_moves_last_seen_backwards() {
        let mut s = Session::new();
        s.joined("a", 0);
        assert!(s.accept_message(&msg("a", 7)));
        s.joined("a", 3);
        assert_eq!(s.last_seen("a"), Some(7));
        s.joined("a", 9);
        assert_eq!(s.last_seen("a"), Some(9));
    }

    #[test]
    fn leaving_forgets_the_room() {
        let mut s = Session::new();
        s.joined("a", 4);
        s.left("a");
        assert!(!s.is_joined("a"));
        assert!(!s.accept_message(&msg("a", 5)));
        s.joined("a", 0);
        assert_eq!(s.last_seen("a"), Some(0));
    }

    #[test]
    fn client_seqs_increase_and_unacked_keep_send_order() {
        let mut s = Session::new();
        let a = s.say("r", "one");
        let b = s.say("r", "two");
        let c = s.say("q", "three");
        assert_eq!((a.client_seq, b.client_seq, c.client_seq), (1, 2, 3));
        assert_eq!(s.next_client_seq(), 4);
        let order: Vec<u64> = s.unacked().map(|p| p.client_seq).collect();
        assert_eq!(order, vec![1, 2, 3]);
        // Acks may come out of order across rooms; only the acked one goes.
        assert_eq!(s.settle(2).map(|p| p.text), Some("two".to_string()));
        assert_eq!(s.settle(2), None, "a second answer is ignored");
        assert!(s.is_pending(1) && s.is_pending(3) && !s.is_pending(2));
        let order: Vec<u64> = s.unacked().map(|p| p.client_seq).collect();
        assert_eq!(order, vec![1, 3]);
        assert_eq!(s.unacked_len(), 2);
        s.settle(1);
        s.settle(3);
        assert_eq!(s.unacked_len(), 0);
        // Settling never reuses numbers.
        assert_eq!(s.say("r", "four").client_seq, 4);
    }

    #[test]
    fn resume_plan_rejoins_after_last_seen_then_resends_in_order() {
        let mut s = Session::new();
        s.joined("lobby", 0);
        s.joined("dev", 41);
        assert!(s.accept_message(&msg("lobby", 1)));
        assert!(s.accept_message(&msg("lobby", 2)));
        let one = s.say("lobby", "one");
        let two = s.say("dev", "two");
        let three = s.say("lobby", "three");
        s.settle(two.client_seq);
        let plan = s.resume_frames();
        assert_eq!(
            plan,
            vec![
                ClientFrame::Join(Join {
                    room: "dev".into(),
                    after_seq: Some(41)
                }),
                ClientFrame::Join(Join {
                    room: "lobby".into(),
                    after_seq: Some(2)
                }),
                one.frame(),
                three.frame(),
            ]
        );
        // The re-sent frames carry the original client sequence numbers.
        assert!(
            matches!(&plan[2], ClientFrame::Say(Say { client_seq: 1, text, .. }) if text == "one")
        );
        assert!(matches!(
            &plan[3],
            ClientFrame::Say(Say { client_seq: 3, .. })
        ));
    }

    #[test]
    fn replay_after_resume_delivers_only_missed_messages() {
        // Seen 1..=3, connection lost, the new node replays 4..=6 after Join{after_seq: 3},
        // while a late live copy of 3 and a second replay of 5 arrive too.
        let mut s = Session::new();
        s.joined("r", 0);
        for seq in 1..=3 {
            assert!(s.accept_message(&msg("r", seq)));
        }
        let delivered: Vec<u64> = [3, 4, 5, 5, 6]
            .into_iter()
            .filter(|&seq| s.accept_message(&msg("r", seq)))
            .collect();
        assert_eq!(delivered, vec![4, 5, 6]);
        assert_eq!(s.gaps_seen(), 0);
    }

    #[test]
    fn empty_session_resumes_with_nothing() {
        assert!(Session::new().resume_frames().is_empty());
    }
}
