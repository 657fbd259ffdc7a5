//! Hostile input for every decoder of bytes from the network or the disk: frames of the three
//! frame sets, WAL records, snapshot files and snapshot images. Each gets random bytes, random
//! bodies behind a valid header (CRC and all, so that bincode runs), and valid encodings of
//! realistic samples that are then damaged: bytes flipped, inserted or removed, cut short, and
//! lengths rewritten. No decoder may panic, claim more bytes than it was given, or ask for an
//! allocation that the input's size does not justify.
//!
//! `make fuzz` runs these with many more cases (`PROPTEST_CASES`); `make test` runs the default.

use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::snapshot_image::{state, talkative_state};
use super::{framed, samples, server_samples};
use crate::codec::alloc_probe::largest_allocation;
use crate::codec::disk::{
    decode_record, decode_snapshot_file, encode_record, snapshot_file_header,
    snapshot_file_header_v1, SnapshotFormat, WalRecord, RECORD_HEADER_LEN, SNAPSHOT_HEADER_LEN,
    SNAPSHOT_MAGIC,
};
use crate::codec::*;
use crate::core::chat::{Activity, ChatState};
use crate::core::log::{Command, Entry, HardState, Proposal, ProposalId};
use crate::core::membership::Config;
use crate::core::{ConnId, SessionId};

/// What serde may preallocate for a sequence or map whose count is hostile, at most: it caps a
/// preallocation at 1 MiB, and a hash map's table can come to twice that.
const PREALLOC: usize = 4 << 20;

/// How much more room a decoded value may take than its encoding (an empty string's 8 bytes
/// become a 24-byte `String`, a `Noop` entry's 21 bytes a whole `Entry`).
const GROWTH: usize = 16;

/// Runs `decode`, failing the case if it asked for a single allocation larger than the input
/// (`len` bytes) can justify: a hostile length must be refused before it is allocated.
fn frugal<R>(len: usize, decode: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    let (result, largest) = largest_allocation(decode);
    prop_assert!(
        largest <= GROWTH * len + PREALLOC,
        "decoding {len} bytes asked for an allocation of {largest} bytes"
    );
    Ok(result)
}

/// Decodes `bytes` as a frame of every set.
fn decode_as_frames(bytes: &[u8]) -> Result<(), TestCaseError> {
    let used = [
        frugal(bytes.len(), || used(decode::<ClientFrame>(bytes)))?,
        frugal(bytes.len(), || used(decode::<ServerFrame>(bytes)))?,
        frugal(bytes.len(), || used(decode::<PeerFrame>(bytes)))?,
        frugal(bytes.len(), || used(decode_server_ref(bytes)))?,
    ];
    for n in used.into_iter().flatten() {
        prop_assert!(n <= bytes.len(), "used {n} of {} bytes", bytes.len());
    }
    Ok(())
}

/// The bytes a decoded frame used.
fn used<F>(decoded: Result<Option<(F, usize)>, CodecError>) -> Option<usize> {
    decoded.ok().flatten().map(|(_, n)| n)
}

/// Decodes `bytes` as a WAL record.
fn decode_as_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(n) = frugal(bytes.len(), || decode_record(bytes).ok().map(|(_, n)| n))? {
        prop_assert!(n <= bytes.len(), "used {n} of {} bytes", bytes.len());
    }
    Ok(())
}

/// Decodes `bytes` as a snapshot file, then its payload as an image, as a node loading it does.
fn decode_as_snapshot_file(bytes: &[u8]) -> Result<(), TestCaseError> {
    let file = frugal(bytes.len(), || decode_snapshot_file(bytes))?;
    if let Ok(file) = file {
        prop_assert!(file.payload.len() <= bytes.len());
        decode_as_image(file.payload)?;
    }
    Ok(())
}

/// Decodes `bytes` as a snapshot image; a state that decodes must encode again (the node that
/// installs it encodes its own snapshots from it), and serve: however inconsistent it is,
/// queries and commands on it must not panic.
fn decode_as_image(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((config, mut chat)) = frugal(bytes.len(), || decode_snapshot(bytes))? {
        chat.configure(2, 10);
        prop_assert!(encode_snapshot(&config, &chat).is_ok());
        serve(&mut chat);
    }
    Ok(())
}

/// Queries every room and session of `chat`, then applies commands of every kind by its own
/// sessions and the samples' to its own rooms and the samples'.
fn serve(chat: &mut ChatState) {
    let mut rooms: Vec<String> = chat.image_rooms().iter().map(|r| r.name.into()).collect();
    rooms.extend(["general".into(), "ops".into()]);
    let mut sessions: Vec<SessionId> = chat
        .session_nodes()
        .into_iter()
        .flat_map(|node| chat.sessions_on(node))
        .collect();
    sessions.extend([session(1), session(2)]);
    for room in &rooms {
        let _ = chat.member_names(room);
        let last = chat.last_seq(room);
        for after in [0, 1, last.saturating_sub(1), last, last + 1, u64::MAX] {
            let _ = chat.messages_after(room, after);
            let _ = chat.page(room, Some(after), 10);
        }
        let _ = chat.page(room, None, 10);
    }
    for &s in &sessions {
        if let Some(user) = chat.user_of(s).map(str::to_owned) {
            let _ = chat.devices(&user);
        }
    }
    let mut commands = commands();
    for (i, &session) in sessions.iter().enumerate() {
        let room = rooms[i % rooms.len()].clone();
        commands.extend([
            Command::Join {
                session,
                room: room.clone(),
                after_seq: Some(1),
            },
            Command::Say {
                session,
                room: room.clone(),
                client_seq: 1,
                text: "t".into(),
                time_ms: 1,
            },
            Command::Leave { session, room },
            Command::OpenSession {
                session,
                user: "u".into(),
                client_id: i as u64,
            },
            Command::CloseSession { session },
            Command::NodeDown { node: session.node },
        ]);
    }
    for entry in entries() {
        let _ = chat.apply_entry(&entry);
    }
    for command in &commands {
        let _ = chat.apply(command);
    }
}

fn session(conn: u64) -> SessionId {
    SessionId {
        node: 2,
        incarnation: 9,
        conn: ConnId(conn),
    }
}

/// A command of every kind.
fn commands() -> Vec<Command> {
    let config = Config {
        retired: [5].into(),
        ..Config::of([(1, "10.0.0.1:7170".into()), (2, "10.0.0.2:7170".into())])
    };
    vec![
        Command::Noop,
        Command::NodeBoot { node: 3 },
        Command::NodeDown { node: 4 },
        Command::OpenSession {
            session: session(1),
            user: "alice".into(),
            client_id: 77,
        },
        Command::CloseSession {
            session: session(2),
        },
        Command::Join {
            session: session(1),
            room: "general".into(),
            after_seq: Some(12),
        },
        Command::Leave {
            session: session(1),
            room: "ops".into(),
        },
        Command::Say {
            session: session(1),
            room: "general".into(),
            client_seq: 5,
            text: "héllo, world".into(),
            time_ms: 1_700_000_000_000,
        },
        Command::Config(config),
    ]
}

/// A log entry of every command kind, from index 10 on; every other one has an origin.
fn entries() -> Vec<Entry> {
    commands()
        .into_iter()
        .enumerate()
        .map(|(i, command)| Entry {
            index: 10 + i as u64,
            epoch: 3,
            origin: (i % 2 == 1).then_some(ProposalId {
                node: 2,
                incarnation: 9,
                seq: i as u64,
            }),
            command,
        })
        .collect()
}

/// Client frames of every kind.
fn client_samples() -> Vec<ClientFrame> {
    let mut frames = samples();
    frames.extend([
        ClientFrame::Status(StatusRequest { flags: 0 }),
        ClientFrame::Admin(AdminRequest::Remove { node: 3 }),
        ClientFrame::Admin(AdminRequest::Snapshot),
    ]);
    frames
}

/// Peer frames of every kind.
fn peer_samples() -> Vec<PeerFrame> {
    let entries = entries();
    let proposals = entries
        .iter()
        .map(|e| Proposal {
            id: ProposalId {
                node: 2,
                incarnation: 9,
                seq: e.index,
            },
            command: e.command.clone(),
        })
        .collect();
    vec![
        PeerFrame::Hello(PeerHello {
            cluster_id: 0xc0ffee,
            node_id: 2,
            epoch: 3,
            client_addr: "10.0.0.2:7070".into(),
        }),
        PeerFrame::Heartbeat(Heartbeat {
            epoch: 3,
            leader: Some(1),
            load: 40,
            hears_you: true,
        }),
        PeerFrame::Append(Append {
            epoch: 3,
            prev_index: 9,
            prev_epoch: 2,
            commit: 9,
            durable: 12,
            entries,
        }),
        PeerFrame::AppendReply(AppendReply {
            epoch: 3,
            ok: false,
            index: 7,
        }),
        PeerFrame::Token(Token {
            epoch: 4,
            pre: true,
            initiator: 2,
            best: Candidate {
                last_epoch: 3,
                last_index: 18,
                id: 1,
            },
            participants: vec![2, 3, 1],
        }),
        PeerFrame::Elected(Elected {
            epoch: 4,
            leader: 1,
            participants: vec![1, 2],
        }),
        PeerFrame::Forward(Forward {
            epoch: 3,
            proposals,
        }),
        PeerFrame::Snapshot(SnapshotChunk {
            epoch: 3,
            index: 500,
            index_epoch: 2,
            offset: 4096,
            total: 9000,
            data: image_samples()[0][..200].to_vec(),
        }),
        PeerFrame::SnapshotReply(SnapshotReply {
            epoch: 3,
            index: 500,
            received: 4096,
        }),
        PeerFrame::Join(JoinRequest {
            cluster_id: 0xc0ffee,
            node_id: 6,
            peer_addr: "10.0.0.6:7170".into(),
            client_addr: "10.0.0.6:7070".into(),
        }),
        PeerFrame::JoinReply(JoinReply {
            ok: false,
            retry: true,
            message: "another change is in progress".into(),
            leader: Some((1, "10.0.0.1:7170".into())),
        }),
    ]
}

/// Encoded frames of every kind of every set.
fn frame_samples() -> Vec<Vec<u8>> {
    let client = client_samples().into_iter().map(|f| encode(&f));
    let server = server_samples().into_iter().map(|f| encode(&f));
    let peer = peer_samples().into_iter().map(|f| encode(&f));
    client
        .chain(server)
        .chain(peer)
        .map(Result::unwrap)
        .collect()
}

/// A WAL record of every kind, an entry of every command kind among them.
fn record_samples() -> Vec<Vec<u8>> {
    let mut records: Vec<WalRecord> = entries().into_iter().map(WalRecord::Entry).collect();
    records.extend([
        WalRecord::HardState(HardState {
            epoch: 7,
            participated: 6,
            incarnation: 123,
            amnesiac: true,
        }),
        WalRecord::Truncate { from: 12 },
        WalRecord::LogReset {
            index: 100,
            epoch: 5,
        },
        WalRecord::Base {
            index: 100,
            epoch: 5,
        },
    ]);
    let encoded = |r: &WalRecord| {
        let mut out = Vec::new();
        encode_record(r, &mut out).unwrap();
        out
    };
    records.iter().map(encoded).collect()
}

/// Snapshot images: of a busy state, of a talkative one, of an empty one, and one of version 2.
fn image_samples() -> Vec<Vec<u8>> {
    let config = Config::of([(1, "10.0.0.1:7170".into()), (4, String::new())]);
    let mut old = state();
    old.forget_activity();
    let mut v2 = encode_snapshot(&Config::default(), &old).unwrap();
    // Version 2 is the same image without the de-duplication clock at its end.
    let mut clock = Vec::new();
    crate::codec::put::<_, 64>(&Activity::default(), &mut clock).unwrap();
    v2.truncate(v2.len() - clock.len());
    v2[0] = 2;
    vec![
        encode_snapshot(&config, &state()).unwrap(),
        encode_snapshot(&config, &talkative_state()).unwrap(),
        encode_snapshot(&Config::default(), &ChatState::new(2, 10)).unwrap(),
        v2,
    ]
}

/// Snapshot files holding each sample image, in the format written (`RCSNAP02`).
fn snapshot_file_samples() -> Vec<Vec<u8>> {
    image_samples()
        .into_iter()
        .map(|image| [&snapshot_file_header(500, 4, &image)[..], &image].concat())
        .collect()
}

/// Snapshot files holding each sample image in the format of earlier versions (`RCSNAP01`),
/// still read.
fn old_snapshot_file_samples() -> Vec<Vec<u8>> {
    image_samples()
        .into_iter()
        .map(|image| [&snapshot_file_header_v1(500, 4, &image)[..], &image].concat())
        .collect()
}

/// The samples, made once: the properties damage copies of them.
struct Samples {
    frames: Vec<Vec<u8>>,
    peer_frames: Vec<Vec<u8>>,
    records: Vec<Vec<u8>>,
    snapshot_files: Vec<Vec<u8>>,
    old_snapshot_files: Vec<Vec<u8>>,
    images: Vec<Vec<u8>>,
}

fn cached() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| Samples {
        frames: frame_samples(),
        peer_frames: peer_samples().iter().map(|f| encode(f).unwrap()).collect(),
        records: record_samples(),
        snapshot_files: snapshot_file_samples(),
        old_snapshot_files: old_snapshot_file_samples(),
        images: image_samples(),
    })
}

/// What is done to the header of a damaged encoding before it is decoded.
#[derive(Clone, Copy, Debug)]
enum Seal {
    /// Nothing: the length and CRC checks catch most damage.
    Keep,
    /// Its length and CRCs made to match the damaged bytes, so that their payload is decoded.
    Again,
    /// Its payload length set to this (a WAL record's with the length's own CRC).
    Length(u64),
}

fn seal() -> impl Strategy<Value = Seal> {
    prop_oneof![
        1 => Just(Seal::Keep),
        2 => Just(Seal::Again),
        1 => length().prop_map(Seal::Length),
    ]
}

fn seal_frame(bytes: &mut [u8], seal: Seal) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let (head, payload) = bytes.split_at_mut(HEADER_LEN);
    match seal {
        Seal::Keep => {}
        Seal::Again => {
            head[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            head[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        }
        Seal::Length(len) => head[8..12].copy_from_slice(&(len as u32).to_le_bytes()),
    }
}

fn seal_record(bytes: &mut [u8], seal: Seal) {
    if bytes.len() < RECORD_HEADER_LEN {
        return;
    }
    let len = match seal {
        Seal::Keep => return,
        Seal::Again => (bytes.len() - RECORD_HEADER_LEN) as u32,
        Seal::Length(len) => len as u32,
    };
    bytes[0..4].copy_from_slice(&len.to_le_bytes());
    bytes[4..8].copy_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    if let Seal::Again = seal {
        let crc = crc32fast::hash(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Seals a snapshot file; `Again` computes the CRC as its magic's format does (`RCSNAP02`: the
/// header before the CRC, then the payload; any other magic: the payload).
fn seal_snapshot_file(bytes: &mut [u8], seal: Seal) {
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return;
    }
    match seal {
        Seal::Keep => {}
        Seal::Again => {
            let len = (bytes.len() - SNAPSHOT_HEADER_LEN) as u64;
            bytes[24..32].copy_from_slice(&len.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            if bytes[0..8] == SNAPSHOT_MAGIC {
                crc.update(&bytes[0..32]);
            }
            crc.update(&bytes[SNAPSHOT_HEADER_LEN..]);
            bytes[32..36].copy_from_slice(&crc.finalize().to_le_bytes());
        }
        Seal::Length(len) => bytes[24..32].copy_from_slice(&len.to_le_bytes()),
    }
}

/// One change to a valid encoding; positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Damage {
    /// XOR the byte at a position with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first bytes.
    Cut(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove up to this many bytes from a position.
    Remove(usize, usize),
    /// Overwrite the nth u64 that could be a length or a count (1 up to the input's size) with
    /// another value.
    Length(usize, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        1 => any::<usize>().prop_map(Damage::Cut),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Damage::Insert(at, b)),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, n)| Damage::Remove(at, n)),
        3 => (any::<usize>(), length()).prop_map(|(nth, v)| Damage::Length(nth, v)),
    ]
}

/// A length to declare: small, around the size of a sample, a kilobyte to a terabyte with
/// every power of two as likely (within the byte limit of some decoders, past that of others),
/// or anything.
fn length() -> impl Strategy<Value = u64> {
    let scaled = (10u32..40, any::<u64>()).prop_map(|(e, r)| (1u64 << e) + r % (1u64 << e));
    prop_oneof![0u64..64, 64u64..4096, scaled, any::<u64>()]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    let len = bytes.len();
    match *damage {
        Damage::Flip(at, mask) if len > 0 => bytes[at % len] ^= mask,
        Damage::Cut(at) => bytes.truncate(at % (len + 1)),
        Damage::Insert(at, ref b) => {
            let at = at % (len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Damage::Remove(at, n) if len > 0 => {
            let at = at % len;
            bytes.drain(at..(at + n).min(len));
        }
        Damage::Length(nth, value) => {
            let le8 = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
            let spots: Vec<usize> = (0..len.saturating_sub(7))
                .filter(|&i| (1..=len as u64).contains(&le8(i)))
                .collect();
            if !spots.is_empty() {
                let at = spots[nth % spots.len()];
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        _ => {}
    }
}

/// `sample`, damaged.
fn damaged(sample: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for d in damages {
        apply(&mut bytes, d);
    }
    bytes
}

/// Bytes shaped like bincode (small integers and lengths, flags, text) as well as noise, so
/// random input gets past the first field more often than noise alone does.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (0u64..40).prop_map(|n| n.to_le_bytes().to_vec()),
        (0u32..12).prop_map(|n| n.to_le_bytes().to_vec()),
        (0u8..3).prop_map(|b| vec![b]),
        "[a-z0-9:.]{0,12}".prop_map(String::into_bytes),
        vec(any::<u8>(), 0..12),
        length().prop_map(|n| n.to_le_bytes().to_vec()),
    ];
    prop_oneof![
        vec(piece, 0..48).prop_map(|pieces| pieces.concat()),
        vec(any::<u8>(), 0..300),
    ]
}

/// A frame kind: any byte, or one some frame set defines.
fn frame_kind() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), 0x01u8..=0x09, 0x41u8..=0x4D, 0x81u8..=0x8B]
}

#[test]
fn the_samples_cover_every_kind_and_decode_undamaged() {
    let frames = frame_samples();
    let kinds: Vec<u8> = frames.iter().map(|f| f[3]).collect();
    for expected in (0x01..=0x09).chain(0x41..=0x4D).chain(0x81..=0x8B) {
        assert!(
            kinds.contains(&expected),
            "no frame of kind {expected:#04x}"
        );
    }
    for f in &frames {
        let ok = match f[3] {
            0x01..=0x09 => decode::<ClientFrame>(f).is_ok(),
            0x41..=0x4D => decode::<ServerFrame>(f).is_ok(),
            _ => decode::<PeerFrame>(f).is_ok(),
        };
        assert!(ok, "frame of kind {:#04x}", f[3]);
    }
    let records = record_samples();
    for kind in 1..=5 {
        assert!(
            records.iter().any(|r| r[12] == kind),
            "no record of kind {kind}"
        );
    }
    assert!(records.iter().all(|r| decode_record(r).is_ok()));
    for (files, format) in [
        (snapshot_file_samples(), SnapshotFormat::V2),
        (old_snapshot_file_samples(), SnapshotFormat::V1),
    ] {
        for file in files {
            let decoded = decode_snapshot_file(&file).unwrap();
            assert_eq!(decoded.format, format);
            decode_snapshot(decoded.payload).unwrap();
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in vec(any::<u8>(), 0..512)) {
        decode_as_frames(&bytes)?;
        decode_as_record(&bytes)?;
        decode_as_snapshot_file(&bytes)?;
        decode_as_image(&bytes)?;
    }

    #[test]
    fn a_random_payload_behind_a_valid_frame_header_never_panics(
        kind in frame_kind(),
        payload in body(),
    ) {
        decode_as_frames(&framed(kind, &payload))?;
    }

    #[test]
    fn a_random_payload_behind_a_valid_record_header_never_panics(
        kind in prop_oneof![1u8..=5, any::<u8>()],
        index in any::<u64>(),
        epoch in any::<u64>(),
        payload in body(),
    ) {
        let mut record = vec![0u8; RECORD_HEADER_LEN];
        record[12] = kind;
        record[13..21].copy_from_slice(&index.to_le_bytes());
        record[21..29].copy_from_slice(&epoch.to_le_bytes());
        record.extend_from_slice(&payload);
        seal_record(&mut record, Seal::Again);
        decode_as_record(&record)?;
    }

    #[test]
    fn a_random_image_behind_a_known_version_never_panics(
        version in prop_oneof![2u32..=3, any::<u32>()],
        body in body(),
    ) {
        let image = [&version.to_le_bytes()[..], &body].concat();
        decode_as_image(&image)?;
        decode_as_snapshot_file(&[&snapshot_file_header(1, 1, &image)[..], &image].concat())?;
        decode_as_snapshot_file(&[&snapshot_file_header_v1(1, 1, &image)[..], &image].concat())?;
    }

    #[test]
    fn a_random_header_on_a_snapshot_file_never_panics(
        magic in prop_oneof![Just(*b"RCSNAP02"), Just(*b"RCSNAP01"), any::<[u8; 8]>()],
        index in any::<u64>(),
        epoch in any::<u64>(),
        seal in seal(),
        sample in any::<prop::sample::Index>(),
    ) {
        // Header fields an RCSNAP02 CRC vouches for, behind a sealed or unsealed checksum.
        let image = sample.get::<Vec<u8>>(&cached().images);
        let mut bytes = [&[0u8; SNAPSHOT_HEADER_LEN][..], image].concat();
        bytes[0..8].copy_from_slice(&magic);
        bytes[8..16].copy_from_slice(&index.to_le_bytes());
        bytes[16..24].copy_from_slice(&epoch.to_le_bytes());
        seal_snapshot_file(&mut bytes, Seal::Again);
        seal_snapshot_file(&mut bytes, seal);
        decode_as_snapshot_file(&bytes)?;
    }

    #[test]
    fn damaged_frames_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
        seal in seal(),
    ) {
        let mut bytes = damaged(sample.get::<Vec<u8>>(&cached().frames), &damages);
        seal_frame(&mut bytes, seal);
        decode_as_frames(&bytes)?;
    }

    #[test]
    fn damaged_peer_frames_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
    ) {
        // Sealed again after the damage: the payload decoder, not the CRC, has to cope.
        let mut bytes = damaged(sample.get::<Vec<u8>>(&cached().peer_frames), &damages);
        seal_frame(&mut bytes, Seal::Again);
        decode_as_frames(&bytes)?;
    }

    #[test]
    fn damaged_wal_records_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
        seal in seal(),
    ) {
        let mut bytes = damaged(sample.get::<Vec<u8>>(&cached().records), &damages);
        seal_record(&mut bytes, seal);
        decode_as_record(&bytes)?;
    }

    #[test]
    fn damaged_snapshot_files_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
        seal in seal(),
    ) {
        let mut bytes = damaged(sample.get::<Vec<u8>>(&cached().snapshot_files), &damages);
        seal_snapshot_file(&mut bytes, seal);
        decode_as_snapshot_file(&bytes)?;
    }

    #[test]
    fn damaged_old_format_snapshot_files_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
        seal in seal(),
    ) {
        let mut bytes = damaged(sample.get::<Vec<u8>>(&cached().old_snapshot_files), &damages);
        seal_snapshot_file(&mut bytes, seal);
        decode_as_snapshot_file(&bytes)?;
    }

    #[test]
    fn damage_to_a_snapshot_file_not_sealed_again_is_refused(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
    ) {
        // Anywhere, header fields included: the RCSNAP02 checksum covers every byte. (Damage
        // may undo itself, or rewrite a length to the value it had: then nothing changed.)
        let sample = sample.get::<Vec<u8>>(&cached().snapshot_files);
        let bytes = damaged(sample, &damages);
        if bytes != *sample {
            let got = frugal(bytes.len(), || decode_snapshot_file(&bytes).map(|f| (f.index, f.epoch)))?;
            prop_assert!(got.is_err(), "damage went unnoticed: {:?}", got);
        }
    }

    #[test]
    fn damaged_snapshot_images_never_panic(
        sample in any::<prop::sample::Index>(),
        damages in vec(damage(), 1..4),
    ) {
        decode_as_image(&damaged(sample.get::<Vec<u8>>(&cached().images), &damages))?;
    }
}
