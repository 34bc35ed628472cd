//! Writes the hand-made seed inputs into `fuzz/corpus/<target>/seed-*`, built with the
//! project's own encoders so they are valid by construction, plus a few near misses named
//! `seed-bad-*`. The corpus replay checks that every other seed is accepted.
//!
//! `cargo run -p sealpost-fuzz --example seeds`. Rerunning overwrites the seeds and leaves
//! the inputs the fuzzer found alone.

use bytes::{Bytes, BytesMut};
use sealpost_client::Mailbox;
use sealpost_client::mailbox_file;
use sealpost_core::e2e::{E2ePublicKey, E2eSecretKey};
use sealpost_core::engine::Engine;
use sealpost_core::envelope;
use sealpost_core::frame::{self, FrameType};
use sealpost_core::invitation::{Invitation, RelayTrust};
use sealpost_core::keys::RecipientSecret;
use sealpost_core::msg::{self, Create, Created, Delete, ErrorMsg, InfoReply, Limits};
use sealpost_core::msg::{Subscribe, Subscribed};
use sealpost_core::padding::SizeClasses;
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_core::{AeadKey, Suite};
use std::path::{Path, PathBuf};

fn out(target: &str, name: &str, data: &[u8]) {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

fn with(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = first.to_vec();
    v.extend_from_slice(rest);
    v
}

fn enc(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn limits() -> Limits {
    Limits {
        max_frame: 65_536 + 64,
        max_envelopes: 10_000,
        max_bytes: 1 << 28,
        retention_secs: 604_800,
        max_window: 1024,
        sizes: SizeClasses::default(),
    }
}

fn sample_envelope(suite: Suite, body_len: usize) -> Bytes {
    let key = AeadKey::new(suite, [7; 32]);
    envelope::build(
        &Engine::detect(),
        &key,
        &[3; 16],
        &[5; 12],
        &vec![0xAB; body_len],
    )
}

fn main() {
    // Envelopes: mode byte 0 = default sizes, 1 = the envelope's own size, 2 = any size.
    let e256 = sample_envelope(Suite::ChaCha20Poly1305, 256);
    let e_aes = sample_envelope(Suite::Aes256Gcm, 1024);
    let e_small = sample_envelope(Suite::ChaCha20Poly1305, 16);
    out("envelope", "chacha-256", &with(&[0], &e256));
    out("envelope", "aes-1024", &with(&[0], &e_aes));
    out("envelope", "own-size-16", &with(&[1], &e_small));
    out("envelope", "any-size-16", &with(&[2], &e_small));
    out("envelope", "bad-truncated", &with(&[0], &e256[..100]));

    // Control payloads: selector byte, then the payload (see sealpost_fuzz::control).
    let create = Create {
        suite: Suite::Aes256Gcm,
        deposit_key: [1; 32],
        recipient_secret: [2; 32],
    };
    let created = Created {
        recipient_id: [3; 16],
        deposit_id: [4; 16],
        limits: limits(),
    };
    let subscribe = Subscribe {
        recipient_id: [3; 16],
        proof: [9; 32],
        window: 64,
    };
    let subscribed = Subscribed {
        pending: 12,
        window: 64,
    };
    let delete = Delete {
        recipient_id: [3; 16],
        proof: [9; 32],
    };
    let info = InfoReply {
        version: "sealpost-relay 0.1.0".into(),
        suites: Suite::ALL.to_vec(),
        limits: limits(),
    };
    let error = ErrorMsg::new(ErrorCode::BadProof, "proof does not verify");
    let statuses = [
        DepositStatus::Ok,
        DepositStatus::Duplicate,
        DepositStatus::BadTag,
    ];
    let mut deliver = 7u64.to_be_bytes().to_vec();
    deliver.extend_from_slice(&[6; 12]);
    deliver.extend_from_slice(&e256);
    deliver.extend_from_slice(&[0xEE; 16]);
    let limited = [DepositStatus::Ok, DepositStatus::RateLimited];
    let control: [(&str, u8, Vec<u8>); 13] = [
        ("create", 0, enc(|o| create.encode(o))),
        ("created", 1, enc(|o| created.encode(o))),
        (
            "deposit-result",
            2,
            enc(|o| msg::encode_deposit_result(&statuses, None, o)),
        ),
        (
            "deposit-result-rate-limited",
            2,
            enc(|o| msg::encode_deposit_result(&limited, Some(250), o)),
        ),
        ("subscribe", 3, enc(|o| subscribe.encode(o))),
        ("subscribed", 4, enc(|o| subscribed.encode(o))),
        ("deliver", 5, deliver),
        ("ack", 6, enc(|o| msg::encode_ack(41, o))),
        ("delete", 7, enc(|o| delete.encode(o))),
        ("info-reply", 8, enc(|o| info.encode(o))),
        ("error", 9, enc(|o| error.encode(o))),
        ("error-built", 10, b"\x00\x07no mailbox \xc3\xa9".to_vec()),
        (
            "info-built",
            11,
            "sealpost-relay 0.1.0 ✓".as_bytes().to_vec(),
        ),
    ];
    for (name, sel, payload) in &control {
        out("control", name, &with(&[*sel], payload));
    }

    // Frame streams: max frame (u16 BE), chunking bytes (a count, then each chunk's length,
    // high bit = push the next without draining), then the stream.
    let mut stream = BytesMut::new();
    frame::encode(FrameType::Info, &[], &mut stream);
    frame::encode(FrameType::Create, &control[0].2, &mut stream);
    frame::encode(FrameType::Deposit, &e256, &mut stream);
    frame::encode(FrameType::Ack, &control[6].2, &mut stream);
    frame::encode(FrameType::DepositResult, &control[2].2, &mut stream);
    out(
        "frame_decoder",
        "mixed",
        &with(&[0x10, 0x00, 3, 5, 0x83, 40], &stream),
    );
    out(
        "frame_decoder",
        "mixed-byte-chunks",
        &with(&[0x10, 0x00, 0], &stream),
    );
    out(
        "frame_decoder",
        "bad-too-large",
        &with(&[0x00, 0x40, 0], &stream),
    );
    out(
        "frame_decoder",
        "bad-truncated",
        &with(&[0x10, 0x00, 2, 0, 7], &stream[..stream.len() - 3]),
    );
    out(
        "frame_decoder",
        "bad-unknown-type",
        &with(&[0x10, 0x00, 1, 2], &[0, 0, 0, 2, 0x0D, 0]),
    );
    out(
        "frame_decoder",
        "bad-empty-frame",
        &with(&[0x10, 0x00, 1, 0x81], &[0, 0, 0, 0]),
    );

    // Invitations: mode 0 = the text, mode 1 = the decoded body before its checksum.
    let e2e = E2eSecretKey::from_bytes(&[0x42; 32]).expect("any 32 bytes are an X25519 key");
    let mut inv = Invitation {
        relays: vec!["relay.example:4433".into()],
        trust: RelayTrust::CertificatePin([1; 32]),
        deposit_id: [2; 16],
        deposit_key: AeadKey::new(Suite::ChaCha20Poly1305, [3; 32]),
        e2e_public: e2e.public_key(),
        forward_key: None,
    };
    let text = inv.encode().expect("sample invitation encodes");
    out("invitation", "text", &with(&[0], text.as_bytes()));
    let mut raw = vec![1u8, Suite::Aes256Gcm.to_u8()];
    raw.extend_from_slice(&[1; 32]);
    raw.extend_from_slice(&[2; 16]);
    raw.extend_from_slice(&[3; 32]);
    raw.extend_from_slice(&E2ePublicKey([4; 32]).0);
    let addr = b"[2001:db8::1]:4433";
    raw.push(addr.len() as u8);
    raw.extend_from_slice(addr);
    out("invitation", "body", &with(&[1], &raw));
    // Version 2: a key pin, and CA trust for the host name (an IPv6 address here).
    inv.trust = RelayTrust::KeyPin([5; 32]);
    let text = inv.encode().expect("sample invitation encodes");
    out(
        "invitation",
        "text-v2-key-pin",
        &with(&[0], text.as_bytes()),
    );
    inv.trust = RelayTrust::CaForHost;
    inv.relays = vec!["[2001:db8::1]:4433".into()];
    let text = inv.encode().expect("sample invitation encodes");
    out("invitation", "text-v2-ca", &with(&[0], text.as_bytes()));
    let tail = |raw: &mut Vec<u8>| {
        raw.extend_from_slice(&[2; 16]);
        raw.extend_from_slice(&[3; 32]);
        raw.extend_from_slice(&E2ePublicKey([4; 32]).0);
        raw.push(addr.len() as u8);
        raw.extend_from_slice(addr);
    };
    let mut raw = vec![2u8, Suite::ChaCha20Poly1305.to_u8(), 1];
    raw.extend_from_slice(&[5; 32]);
    tail(&mut raw);
    out("invitation", "body-v2-key-pin", &with(&[1], &raw));
    let mut raw = vec![2u8, Suite::Aes256Gcm.to_u8(), 2];
    tail(&mut raw);
    out("invitation", "body-v2-ca", &with(&[1], &raw));
    let mut raw = vec![2u8, Suite::Aes256Gcm.to_u8(), 9];
    tail(&mut raw);
    out("invitation", "bad-v2-unknown-trust", &with(&[1], &raw));
    // Version 3: several relay addresses (count, then each length-prefixed).
    inv.relays = vec!["a.example:4433".into(), "[2001:db8::1]:4433".into()];
    let text = inv.encode().expect("sample invitation encodes");
    out("invitation", "text-v3-ca", &with(&[0], text.as_bytes()));
    let v3 = |count: u8, addrs: &[&[u8]]| {
        let mut raw = vec![3u8, Suite::ChaCha20Poly1305.to_u8(), 1];
        raw.extend_from_slice(&[5; 32]);
        raw.extend_from_slice(&[2; 16]);
        raw.extend_from_slice(&[3; 32]);
        raw.extend_from_slice(&E2ePublicKey([4; 32]).0);
        raw.push(count);
        for a in addrs {
            raw.push(a.len() as u8);
            raw.extend_from_slice(a);
        }
        raw
    };
    let three: [&[u8]; 3] = [b"r1.example:4433", b"192.0.2.7:4433", addr];
    out("invitation", "body-v3-key-pin", &with(&[1], &v3(3, &three)));
    out(
        "invitation",
        "bad-v3-one-relay",
        &with(&[1], &v3(1, &three[..1])),
    );
    out(
        "invitation",
        "bad-v3-count-short",
        &with(&[1], &v3(3, &three[..2])),
    );
    out(
        "invitation",
        "bad-v3-twice",
        &with(&[1], &v3(2, &[addr, addr])),
    );
    out(
        "invitation",
        "bad-v3-no-port",
        &with(&[1], &v3(2, &[addr, b"r1.example"])),
    );

    // Settings files: the shipped example, an empty file, and one of every other choice.
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sealpost.toml"))
            .expect("deploy/sealpost.toml");
    out("settings", "deploy", &shipped);
    out("settings", "empty", b"");
    out(
        "settings",
        "choices",
        b"listen = \"[::]:4433\"\nadmin = \"0.0.0.0:9464\"\nstore = \"memory\"\n\
          log_format = \"json\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n\
          master_key_file = \"/etc/m.key\"\nsizes = [256, 4096]\nbackend = \"portable\"\n\
          shards = 4\nmax_batch = 65535\nidle_timeout_secs = 600\n",
    );

    // Mailbox files, as `sealpost-relay create` writes them.
    let mailbox = Mailbox {
        relays: vec!["relay.example:4433".into()],
        trust: RelayTrust::KeyPin([1; 32]),
        suite: Suite::Aes256Gcm,
        recipient_id: [3; 16],
        deposit_id: [4; 16],
        deposit_key: AeadKey::new(Suite::Aes256Gcm, [5; 32]),
        recipient_secret: RecipientSecret([6; 32]),
        e2e_secret: e2e,
        sizes: SizeClasses::default(),
        forward_key: None,
    };
    let json = mailbox_file::to_json(&mailbox).expect("sample mailbox serialises");
    out("mailbox_file", "aes", json.as_bytes());
    let compact: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    out("mailbox_file", "compact", compact.to_string().as_bytes());
    // The previous format, with the pin of the whole certificate, is still read.
    let mut v1 = compact.clone();
    let fields = v1.as_object_mut().expect("a JSON object");
    fields.remove("trust");
    fields.insert("format".into(), "sealpost-mailbox-v1".into());
    fields.insert("pin".into(), "01".repeat(32).into());
    out("mailbox_file", "v1", v1.to_string().as_bytes());
    let mut ca = compact;
    ca["trust"] = "ca".into();
    out("mailbox_file", "v2-ca", ca.to_string().as_bytes());
    // Several relays: a v3 file with `relays` instead of `relay`.
    let mut several = ca;
    let fields = several.as_object_mut().expect("a JSON object");
    fields.remove("relay");
    fields.insert("format".into(), "sealpost-mailbox-v3".into());
    fields.insert(
        "relays".into(),
        serde_json::json!(["a.example:4433", "[2001:db8::1]:4433"]),
    );
    out("mailbox_file", "v3-relays", several.to_string().as_bytes());
}
