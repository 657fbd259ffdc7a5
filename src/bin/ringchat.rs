//! `ringchat`: the command-line chat client, interactive or scriptable.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringchat::client::{admin, code_name, Client, ClientConfig, ClientError, Event};
use ringchat::codec::{AdminReply, AdminRequest};
use ringchat::codec::{ChatMessage, NoticeEvent};

/// Exit status: the server refused (invalid text, device limit, not in room, ...).
const EXIT_REFUSED: u8 = 1;
/// Exit status: bad command line (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// Exit status: no server reachable, connection lost, or a timeout.
const EXIT_CONNECTION: u8 = 3;
/// How long an admin request waits for each node's answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of the local cluster started by `make run` (scripts/cluster.sh).
const DEFAULT_SERVERS: &str = "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072";

#[derive(Parser, Debug)]
#[command(
    name = "ringchat",
    version,
    about = "Chat on a ringchat cluster",
    subcommand_negates_reqs = true,
    override_usage = "ringchat [OPTIONS] USER ROOM\n       ringchat [-s ADDRS] admin status [--json]",
    long_about = "Chat on a ringchat cluster.\n\n\
        Without --send/--history/--follow: joins ROOM as USER, shows the room's recent history, \
        then live messages as `HH:MM:SSZ [room] author: text` (UTC); every line typed is sent. \
        Commands: /join ROOM, /leave [ROOM], /who [ROOM], /history [N], /rooms, /ping, /help, \
        /quit (or end of input). Start a message with // to send a text that begins with /.\n\n\
        If the server dies, the client fails over to the next address by itself and resumes: \
        nothing is missed, nothing is shown twice, unacknowledged messages are re-sent.\n\n\
        `ringchat admin status` shows every node of the server list instead (see \
        `ringchat admin status --help`). A user literally named \"admin\" chats with \
        `ringchat -- admin ROOM`.",
    after_help = "Exit status: 0 ok, 1 refused by the server, 2 usage error, \
        3 no server reachable / connection lost / timeout.\n\n\
        Examples:\n  \
        ringchat alice lobby\n  \
        ringchat -s 10.0.0.1:7070,10.0.0.2:7070 alice lobby\n  \
        ringchat alice lobby --send 'hello there'\n  \
        printf 'one\\ntwo\\n' | ringchat alice lobby --send -\n  \
        ringchat --json bob lobby --history --limit 50\n  \
        ringchat --json bob lobby --follow\n  \
        ringchat -s 127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072 admin status"
)]
struct Args {
    /// Server addresses, comma separated, tried in order and used for failover.
    /// Default: $RINGCHAT_SERVERS, else 127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072.
    #[arg(
        short,
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        global = true
    )]
    servers: Vec<String>,

    #[command(subcommand)]
    command: Option<Command>,

    /// Username: 1-32 of letters, digits, '_', '-', '.', starting with a letter or digit.
    #[arg(required = true)]
    user: Option<String>,

    /// Room to join (same rules as usernames, up to 64 characters); created on first join.
    #[arg(required = true)]
    room: Option<String>,

    /// Send TEXT to ROOM, wait until the cluster acknowledges it, and exit. With "-", send each
    /// non-empty line of standard input. Prints nothing (the seq with --json).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["history", "follow"])]
    send: Option<String>,

    /// Print the last --limit messages of ROOM and exit (does not join the room).
    #[arg(long, conflicts_with = "follow")]
    history: bool,

    /// Number of messages for --history (the server caps it).
    #[arg(long, value_name = "N", default_value_t = 10)]
    limit: u32,

    /// Join ROOM, print its history and then every new message until killed; ignores stdin.
    #[arg(long)]
    follow: bool,

    /// Print messages as JSON lines {"room","seq","author","time_ms","text"} on stdout;
    /// notices and status lines go to stderr.
    #[arg(long)]
    json: bool,

    /// Seconds to wait for each answer from the server.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// Do not fail over to another server when the connection is lost; exit with status 3.
    #[arg(long)]
    no_reconnect: bool,

    /// Device id sent to the server (default: random). Reusing one resumes that device.
    #[arg(long, value_name = "ID")]
    client_id: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cluster administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Show the status of every node of the server list, one line per node.
    ///
    /// Columns: node id, address, role, epoch, leader, last / commit / applied log index,
    /// LAG, REPL and client connections. An unreachable node shows as "down". LAG is the
    /// highest commit index seen across the nodes minus the node's applied index; REPL is,
    /// from the leader's report, its last index minus the node's match index. Exit status 0
    /// when at least one node answered, 3 when none did.
    Status {
        /// One JSON object per node, one per line.
        #[arg(long)]
        json: bool,

        /// Seconds to wait for each node's answer.
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        timeout: f64,
    },
    /// Remove NODE from the cluster for good (its id is never used again); the node stops once
    /// it knows. Asks the leader (found through the server list). Exit status 0 when the
    /// leader started the removal, 1 when it refused (the reason is printed), 3 when no node
    /// answered.
    Remove {
        /// The node id.
        node: u32,
    },
    /// Make the node at the one server address given (-s ADDR) leave the cluster for good:
    /// `admin remove` with that node's id, which it is asked for first. Exit status as for
    /// `admin remove`.
    Leave,
    /// Make the node(s) of the server list take a snapshot now and compact their logs.
    Snapshot,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let servers = servers(&args.servers);
    if servers.is_empty() {
        eprintln!("ringchat: no server address given");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(Command::Admin { command }) = &args.command {
        return match command {
            AdminCommand::Status { json, timeout } => {
                admin_status(&servers, *json || args.json, *timeout)
            }
            AdminCommand::Remove { node } => {
                admin_request(&servers, &AdminRequest::Remove { node: *node })
            }
            AdminCommand::Leave => match servers.as_slice() {
                [addr] => admin_answer(admin::leave(addr, ADMIN_TIMEOUT)),
                _ => {
                    eprintln!(
                        "ringchat: admin leave takes exactly one server (-s ADDR): the node \
                         that leaves; {} given",
                        servers.len()
                    );
                    ExitCode::from(EXIT_USAGE)
                }
            },
            AdminCommand::Snapshot => {
                let codes: Vec<ExitCode> = servers
                    .iter()
                    .map(|s| admin_request(std::slice::from_ref(s), &AdminRequest::Snapshot))
                    .collect();
                codes
                    .into_iter()
                    .find(|c| *c != ExitCode::SUCCESS)
                    .unwrap_or(ExitCode::SUCCESS)
            }
        };
    }
    // Without a subcommand clap requires both positionals.
    let (Some(user), Some(room)) = (args.user.clone(), args.room.clone()) else {
        eprintln!("ringchat: USER and ROOM are required");
        return ExitCode::from(EXIT_USAGE);
    };
    for (what, r) in [
        ("username", ringchat::core::names::validate_user(&user)),
        ("room", ringchat::core::names::validate_room(&room)),
    ] {
        if let Err(e) = r {
            eprintln!("ringchat: invalid {what}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("ringchat: --timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut cfg = ClientConfig::new(servers, user);
    cfg.request_timeout = Duration::from_secs_f64(args.timeout);
    cfg.reconnect = !args.no_reconnect;
    if let Some(id) = args.client_id {
        cfg.client_id = id;
    }
    let out = Out { json: args.json };
    let result = Client::connect(cfg).and_then(|mut client| {
        if let Some(text) = &args.send {
            send(&mut client, &room, text, out)
        } else if args.history {
            history(&mut client, &room, args.limit, out)
        } else if args.follow {
            follow(&mut client, &room, out)
        } else {
            interactive(&mut client, &room, out)
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ringchat: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The server list: `-s`, else `$RINGCHAT_SERVERS`, else the default.
fn servers(arg: &[String]) -> Vec<String> {
    let list: Vec<String> = if arg.is_empty() {
        match std::env::var("RINGCHAT_SERVERS") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(str::to_owned).collect(),
            _ => DEFAULT_SERVERS.split(',').map(str::to_owned).collect(),
        }
    } else {
        arg.to_vec()
    };
    list.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `admin remove` / `admin snapshot`: one request, its answer printed.
fn admin_request(servers: &[String], req: &AdminRequest) -> ExitCode {
    admin_answer(admin::request(servers, req, ADMIN_TIMEOUT))
}

/// Prints an admin answer; exit status 0 done, 1 refused, 3 no answer.
fn admin_answer(answer: Result<AdminReply, String>) -> ExitCode {
    match answer {
        Ok(r) if r.ok => {
            println!("{}", r.message);
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("ringchat: refused: {}", r.message);
            ExitCode::from(EXIT_REFUSED)
        }
        Err(e) => {
            eprintln!("ringchat: no node answered: {e}");
            ExitCode::from(EXIT_CONNECTION)
        }
    }
}

/// `admin status`: every node's status, one line (or JSON object) per node.
fn admin_status(servers: &[String], json: bool, timeout: f64) -> ExitCode {
    if !(timeout.is_finite() && timeout > 0.0) {
        eprintln!("ringchat: --timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_USAGE);
    }
    let results = admin::query_all(servers, Duration::from_secs_f64(timeout));
    let views = admin::cluster_view(servers, results);
    let out = Out { json };
    if !json {
        out.stdout(&admin::view_header());
    }
    for v in &views {
        let line = if json {
            admin::view_json(v).to_string()
        } else {
            admin::view_line(v)
        };
        out.stdout(&line);
    }
    if views.iter().any(|v| v.report.is_ok()) {
        ExitCode::SUCCESS
    } else {
        eprintln!("ringchat: no node answered");
        ExitCode::from(EXIT_CONNECTION)
    }
}

fn exit_code(e: &ClientError) -> u8 {
    if e.is_refusal() {
        EXIT_REFUSED
    } else {
        EXIT_CONNECTION
    }
}

/// Errors after which the session cannot go on.
fn is_fatal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::NoServer(_) | ClientError::Disconnected { .. } | ClientError::Io { .. }
    )
}

/// `--send`: one message (or one per stdin line), acknowledged, then exit.
fn send(client: &mut Client, room: &str, text: &str, out: Out) -> Result<u8, ClientError> {
    client.join(room)?;
    if text != "-" {
        let ack = client.say(room, text)?;
        if out.json {
            out.stdout(&ack_json(&ack));
        }
        return Ok(0);
    }
    let mut status = 0;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|source| ClientError::Io {
            addr: "stdin".into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        client.send(room, &line)?;
        // Report answers as they come, keeping the pipeline full.
        while let Some(e) = client.next_event(Duration::ZERO)? {
            status = status.max(report_send_event(&e, out));
        }
    }
    client.flush()?;
    while let Some(e) = client.next_event(Duration::ZERO)? {
        status = status.max(report_send_event(&e, out));
    }
    Ok(status)
}

fn report_send_event(e: &Event, out: Out) -> u8 {
    match e {
        Event::Ack(a) if out.json => {
            out.stdout(&ack_json(a));
            0
        }
        Event::Error {
            code,
            client_seq: Some(_),
            message,
        } => {
            eprintln!("! {}: {message}", code_name(*code));
            EXIT_REFUSED
        }
        _ => 0,
    }
}

fn ack_json(a: &ringchat::codec::Ack) -> String {
    serde_json::json!({ "room": a.room, "seq": a.seq, "client_seq": a.client_seq }).to_string()
}

/// `--history`: the last `limit` messages of the room.
fn history(client: &mut Client, room: &str, limit: u32, out: Out) -> Result<u8, ClientError> {
    let page = client.history(room, None, limit)?;
    for m in &page.messages {
        out.message(m);
    }
    Ok(0)
}

/// `--follow`: history, then live messages until killed.
fn follow(client: &mut Client, room: &str, out: Out) -> Result<u8, ClientError> {
    let joined = client.join(room)?;
    for m in &joined.history {
        out.message(m);
    }
    loop {
        if let Some(e) = client.next_event(Duration::from_secs(1))? {
            out.event(&e);
        }
    }
}

/// What the main loop should do after a line.
enum Flow {
    Go,
    Quit,
}

struct Chat {
    current: Option<String>,
    out: Out,
}

/// Interactive mode: stdin is read on its own thread and forwarded through a channel; the main
/// thread alternates short waits for server events with draining that channel.
fn interactive(client: &mut Client, room: &str, out: Out) -> Result<u8, ClientError> {
    let mut chat = Chat { current: None, out };
    chat.join(client, room)?;
    out.status("type a message and press Enter; /help lists the commands");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
        // Dropping `tx` tells the main thread that input ended.
    });
    loop {
        // Show what has arrived, then take one typed line; wait briefly only when idle.
        while let Some(e) = client.next_event(Duration::ZERO)? {
            out.event(&e);
        }
        match rx.try_recv() {
            Ok(line) => {
                if let Flow::Quit = chat.line(client, &line)? {
                    return quit(client, out);
                }
            }
            Err(mpsc::TryRecvError::Empty) => {
                if let Some(e) = client.next_event(Duration::from_millis(50))? {
                    out.event(&e);
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => return quit(client, out),
        }
    }
}

/// Waits for the messages typed so far to be acknowledged, shows what is left, and exits.
fn quit(client: &mut Client, out: Out) -> Result<u8, ClientError> {
    let flushed = client.flush();
    while let Ok(Some(e)) = client.next_event(Duration::ZERO) {
        out.event(&e);
    }
    match flushed {
        Ok(()) => Ok(0),
        Err(e) => {
            out.error(&format!(
                "{} message(s) not acknowledged: {e}",
                client.session().unacked_len()
            ));
            Ok(exit_code(&e))
        }
    }
}

impl Chat {
    fn join(&mut self, client: &mut Client, room: &str) -> Result<(), ClientError> {
        let j = client.join(room)?;
        for m in &j.history {
            self.out.message(m);
        }
        self.out.status(&format!(
            "joined #{} as {} on {}; here: {}",
            j.room,
            client.config().user,
            client.server(),
            j.members.join(", ")
        ));
        self.current = Some(j.room);
        Ok(())
    }

    /// Handles one typed line. Errors the user can fix are shown; losing the session is
    /// returned.
    fn line(&mut self, client: &mut Client, line: &str) -> Result<Flow, ClientError> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(Flow::Go);
        }
        let result = if let Some(text) = line.strip_prefix("//") {
            self.say(client, &format!("/{text}"))
        } else if let Some(cmd) = line.strip_prefix('/') {
            let mut words = cmd.split_whitespace();
            let name = words.next().unwrap_or("");
            let arg = words.next();
            match name {
                "quit" | "q" | "exit" => return Ok(Flow::Quit),
                _ => self.command(client, name, arg),
            }
        } else {
            self.say(client, line)
        };
        match result {
            Err(e) if is_fatal(&e) => Err(e),
            Err(e) => {
                self.out.error(&e.to_string());
                Ok(Flow::Go)
            }
            Ok(()) => Ok(Flow::Go),
        }
    }

    fn say(&mut self, client: &mut Client, text: &str) -> Result<(), ClientError> {
        match &self.current {
            // Pipelined: the message shows when the server delivers it back; a refusal comes
            // as an error event.
            Some(room) => client.send(room, text).map(|_| ()),
            None => {
                self.out.error("not in a room; /join ROOM first");
                Ok(())
            }
        }
    }

    fn room_or_current(&self, arg: Option<&str>) -> Option<String> {
        arg.map(str::to_owned).or_else(|| self.current.clone())
    }

    fn command(
        &mut self,
        client: &mut Client,
        name: &str,
        arg: Option<&str>,
    ) -> Result<(), ClientError> {
        match (name, arg) {
            ("help" | "h" | "?", _) => {
                for l in HELP.lines() {
                    self.out.status(l);
                }
            }
            ("join" | "j", Some(room)) => self.join(client, room)?,
            ("leave" | "part", _) => {
                let Some(room) = self.room_or_current(arg) else {
                    self.out.error("not in a room");
                    return Ok(());
                };
                client.leave(&room)?;
                self.out.status(&format!("left #{room}"));
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = client.session().rooms().last().map(|(r, _)| r.to_owned());
                    if let Some(r) = &self.current {
                        self.out.status(&format!("now talking in #{r}"));
                    }
                }
            }
            ("who" | "w", _) => {
                let Some(room) = self.room_or_current(arg) else {
                    self.out.error("not in a room; /who ROOM");
                    return Ok(());
                };
                let users = client.who(&room)?;
                self.out
                    .status(&format!("in #{room}: {}", users.join(", ")));
            }
            ("history", _) => {
                let Some(room) = self.current.clone() else {
                    self.out.error("not in a room");
                    return Ok(());
                };
                let limit = match arg.map(str::parse::<u32>) {
                    None => 10,
                    Some(Ok(n)) if n > 0 => n,
                    Some(_) => {
                        self.out.error("usage: /history [N], N a positive number");
                        return Ok(());
                    }
                };
                let page = client.history(&room, None, limit)?;
                if page.messages.is_empty() {
                    self.out.status(&format!("#{room} has no messages yet"));
                }
                for m in &page.messages {
                    self.out.message(m);
                }
            }
            ("rooms", _) => {
                let rooms: Vec<String> = client
                    .session()
                    .rooms()
                    .map(|(r, _)| format!("#{r}"))
                    .collect();
                let current = self.current.as_deref().unwrap_or("-");
                self.out.status(&format!(
                    "rooms: {} (talking in #{current})",
                    rooms.join(", ")
                ));
            }
            ("ping", _) => {
                let rtt = client.ping()?;
                self.out.status(&format!(
                    "pong from {} in {:.2} ms",
                    client.server(),
                    rtt.as_secs_f64() * 1e3
                ));
            }
            ("join" | "j", None) => self.out.error("usage: /join ROOM"),
            (other, _) => self.out.error(&format!(
                "unknown command /{other}; /help lists the commands"
            )),
        }
        Ok(())
    }
}

const HELP: &str = "commands:
  /join ROOM      join ROOM (created if new) and talk there
  /leave [ROOM]   leave ROOM (default: the current room)
  /who [ROOM]     who is in ROOM (default: the current room)
  /history [N]    the last N messages of the current room (default 10)
  /rooms          the rooms joined
  /ping           round trip time to the server
  /quit           exit (so does end of input, Ctrl-D)
  //text          send a message that starts with /";

/// Output formatting: text or JSON lines. Messages go to stdout; in JSON mode everything else
/// goes to stderr so stdout stays machine-readable.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn stdout(&self, line: &str) {
        let mut o = io::stdout().lock();
        if writeln!(o, "{line}").and_then(|_| o.flush()).is_err() {
            // The reader went away (e.g. `| head`): nothing more to do.
            std::process::exit(0);
        }
    }

    fn message(&self, m: &ChatMessage) {
        if self.json {
            match serde_json::to_string(m) {
                Ok(s) => self.stdout(&s),
                Err(e) => self.error(&format!("cannot encode message as JSON: {e}")),
            }
        } else {
            self.stdout(&format!(
                "{} [{}] {}: {}",
                hms(m.time_ms),
                clean(&m.room),
                clean(&m.author),
                clean(&m.text)
            ));
        }
    }

    fn status(&self, text: &str) {
        let line = format!("-- {text}");
        if self.json {
            eprintln!("{line}");
        } else {
            self.stdout(&line);
        }
    }

    fn error(&self, text: &str) {
        eprintln!("! {text}");
    }

    fn event(&self, e: &Event) {
        match e {
            Event::Message(m) => self.message(m),
            Event::Notice(n) => {
                let what = match n.event {
                    NoticeEvent::Joined => "joined",
                    NoticeEvent::Left => "left",
                };
                self.status(&format!("{} {what} #{}", clean(&n.user), clean(&n.room)));
            }
            Event::Ack(_) => {}
            Event::Error {
                code,
                client_seq,
                message,
            } => {
                let what = if client_seq.is_some() {
                    " (message not sent)"
                } else {
                    ""
                };
                self.error(&format!("{}: {}{what}", code_name(*code), clean(message)));
            }
            Event::Reconnecting { addr, attempt: 1 } => {
                self.status(&format!("connection lost, reconnecting to {addr}…"))
            }
            Event::Reconnecting { addr, attempt } => {
                self.status(&format!("reconnecting to {addr} (attempt {attempt})…"))
            }
            Event::Reconnected { addr } => self.status(&format!("reconnected to {addr}")),
        }
    }
}

/// `HH:MM:SSZ` of a Unix time in milliseconds (UTC).
fn hms(time_ms: u64) -> String {
    let s = (time_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, (s / 60) % 60, s % 60)
}

/// Text safe for a terminal: control characters (escape sequences) shown escaped.
fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Args::command().debug_assert();
    }

    #[test]
    fn timestamps_are_utc_hms() {
        assert_eq!(hms(0), "00:00:00Z");
        assert_eq!(hms(1_700_000_000_123), "22:13:20Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\tb"), "a\tb");
        assert_eq!(clean("\u{1b}[2J"), "\\u{1b}[2J");
    }

    #[test]
    fn admin_is_a_subcommand_and_chat_positionals_still_parse() {
        let a = Args::try_parse_from(["ringchat", "alice", "general"]).unwrap();
        assert!(a.command.is_none());
        assert_eq!(
            (a.user.as_deref(), a.room.as_deref()),
            (Some("alice"), Some("general"))
        );
        let a = Args::try_parse_from(["ringchat", "-s", "a:1,b:2", "admin", "status", "--json"])
            .unwrap();
        assert_eq!(a.servers, vec!["a:1", "b:2"]);
        assert!(matches!(
            a.command,
            Some(Command::Admin {
                command: AdminCommand::Status { json: true, .. }
            })
        ));
        let a = Args::try_parse_from(["ringchat", "admin", "status", "-s", "c:3"]).unwrap();
        assert_eq!(a.servers, vec!["c:3"]);
        let a = Args::try_parse_from(["ringchat", "--", "admin", "lobby"]).unwrap();
        assert_eq!(
            (a.user.as_deref(), a.room.as_deref()),
            (Some("admin"), Some("lobby"))
        );
        assert!(Args::try_parse_from(["ringchat", "alice"]).is_err());
        assert!(Args::try_parse_from(["ringchat", "admin"]).is_err());
    }

    #[test]
    fn servers_default_to_the_local_cluster() {
        if std::env::var_os("RINGCHAT_SERVERS").is_none() {
            assert_eq!(
                servers(&[]),
                vec!["127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072"]
            );
        }
    }

    #[test]
    fn servers_from_flag_are_trimmed() {
        let s = servers(&["a:1".into(), " b:2 ".into(), "".into()]);
        assert_eq!(s, vec!["a:1", "b:2"]);
    }
}
