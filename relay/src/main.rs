//! `sealpost-relay`: run a relay (`serve`), and the person-facing client commands
//! (`mailbox create`, `send`, `recv`, `info`, `mailbox delete`).
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::invitation::Invitation;
use sealpost_core::padding::SizeClasses;
use sealpost_relay::client::Client;
use sealpost_relay::store::Store;
use sealpost_relay::store::disk::{DiskOptions, DiskStore};
use sealpost_relay::store::memory::MemoryStore;
use sealpost_relay::{RelayConfig, RelayLimits, mailbox_file, tls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sealpost-relay",
    version,
    about = "sealpost: a QUIC relay for end-to-end encrypted messages"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a relay.
    Serve(ServeArgs),
    /// Create or delete mailboxes.
    #[command(subcommand)]
    Mailbox(MailboxCmd),
    /// Seal a message end to end for an invitation and deposit it.
    Send {
        /// The invitation string from `mailbox create`.
        invitation: String,
        /// The message; `-` reads it from standard input.
        message: String,
    },
    /// Receive, print and acknowledge the messages waiting in a mailbox.
    Recv {
        /// The mailbox file written by `mailbox create`.
        mailbox_file: PathBuf,
        /// Keep waiting for new messages instead of exiting when the mailbox is drained.
        #[arg(long)]
        follow: bool,
        /// Seconds to wait for further messages after the backlog before exiting.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
    },
    /// Show a relay's version and limits.
    Info(RelayArgs),
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// Create a mailbox, print its invitation and keep its secrets in a file.
    Create {
        #[command(flatten)]
        relay: RelayArgs,
        /// AEAD suite for deposit tags and deliveries.
        #[arg(long, default_value = "chacha20poly1305")]
        suite: Suite,
        /// Where to write the recipient's mailbox file (mode 0600).
        #[arg(long, default_value = "mailbox.json")]
        out: PathBuf,
    },
    /// Delete a mailbox and everything in it.
    Delete {
        /// The mailbox file.
        mailbox_file: PathBuf,
    },
}

#[derive(Args)]
struct RelayArgs {
    /// Relay address, host:port.
    #[arg(long, default_value = "127.0.0.1:4433", env = "SEALPOST_RELAY")]
    relay: String,
    /// SHA-256 pin of the relay certificate (64 hex digits). Without it, the pin of the
    /// certificate in --data-dir is used (for a relay on this machine).
    #[arg(long, env = "SEALPOST_PIN")]
    pin: Option<String>,
    /// Data directory of a local relay, used to find its pin when --pin is absent.
    #[arg(long, default_value = "sealpost-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433", env = "SEALPOST_LISTEN")]
    listen: SocketAddr,
    /// Data directory (the generated certificate lives in its tls/ folder).
    #[arg(long, default_value = "sealpost-data", env = "SEALPOST_DATA_DIR")]
    data_dir: PathBuf,
    /// Certificate chain (PEM) instead of the generated self-signed one; needs --key.
    #[arg(long, requires = "key", env = "SEALPOST_CERT")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert", env = "SEALPOST_KEY")]
    key: Option<PathBuf>,
    /// Allowed body sizes, comma-separated (one value for a single fixed size).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,4096,16384,65536"
    )]
    sizes: Vec<u32>,
    /// Envelopes one mailbox may hold.
    #[arg(long, default_value_t = 10_000)]
    max_envelopes: u32,
    /// Envelope bytes one mailbox may hold.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_bytes: u64,
    /// Seconds an unacknowledged envelope is kept before it expires.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    retention_secs: u64,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 64)]
    max_streams: u32,
    /// Seconds of silence after which a connection is closed.
    #[arg(long, default_value_t = 30)]
    idle_timeout_secs: u64,
    /// Where mailboxes live: `disk` (durable, in DATA_DIR/store) or `memory` (volatile, for
    /// benchmarks).
    #[arg(long, default_value = "disk", value_parser = ["disk", "memory"], env = "SEALPOST_STORE")]
    store: String,
    /// File holding a 32-byte master key as 64 hex digits; mailbox secrets are then encrypted at
    /// rest. SEALPOST_MASTER_KEY may hold the hex key itself instead.
    #[arg(long, env = "SEALPOST_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

fn master_key(file: Option<&PathBuf>) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, String> {
    let text = match (file, std::env::var("SEALPOST_MASTER_KEY")) {
        (Some(f), _) => zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| format!("--master-key-file {}: {e}", f.display()))?,
        ),
        (None, Ok(v)) => zeroize::Zeroizing::new(v),
        (None, Err(_)) => return Ok(None),
    };
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut key[..])
        .map_err(|_| "the master key must be 64 hex digits (32 bytes)".to_owned())?;
    Ok(Some(key))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEALPOST_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve(a) => serve(a).await,
        Cmd::Mailbox(MailboxCmd::Create { relay, suite, out }) => create(relay, suite, out).await,
        Cmd::Mailbox(MailboxCmd::Delete { mailbox_file }) => delete(mailbox_file).await,
        Cmd::Send {
            invitation,
            message,
        } => send(invitation, message).await,
        Cmd::Recv {
            mailbox_file,
            follow,
            wait,
        } => recv(mailbox_file, follow, wait).await,
        Cmd::Info(relay) => info(relay).await,
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

type CmdResult = Result<(), String>;

async fn serve(a: ServeArgs) -> CmdResult {
    // A bad SEALPOST_BACKEND is an operator error: say so instead of silently falling back.
    sealpost_core::engine::backend_from_env().map_err(|e| format!("SEALPOST_BACKEND: {e}"))?;
    let sizes = SizeClasses::new(a.sizes).map_err(|e| format!("--sizes: {e}"))?;
    let limits = RelayLimits {
        sizes,
        max_envelopes: a.max_envelopes,
        max_bytes: a.max_bytes,
        retention: Duration::from_secs(a.retention_secs),
        max_streams: a.max_streams,
        idle_timeout: Duration::from_secs(a.idle_timeout_secs),
        ..RelayLimits::default()
    };
    let quotas = limits.quotas();
    let config = RelayConfig {
        listen: a.listen,
        data_dir: a.data_dir.clone(),
        cert: a.cert,
        key: a.key,
        limits,
    };
    let key = master_key(a.master_key_file.as_ref())?;
    let store: Arc<dyn Store> = if a.store == "memory" {
        eprintln!("store: memory (volatile: envelopes do not survive a restart)");
        Arc::new(MemoryStore::new(quotas))
    } else {
        let dir = a.data_dir.join("store");
        let t0 = std::time::Instant::now();
        let encrypted = key.is_some();
        let disk = tokio::task::spawn_blocking(move || {
            DiskStore::open(
                &dir,
                quotas,
                DiskOptions {
                    master_key: key,
                    ..DiskOptions::default()
                },
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let stats = disk.stats_now();
        eprintln!(
            "store: disk at {} ({} mailboxes, {} envelopes recovered in {:.2} s)",
            disk.dir().display(),
            stats.mailboxes,
            stats.envelopes,
            t0.elapsed().as_secs_f64()
        );
        if !encrypted {
            eprintln!(
                "warning: no master key: mailbox secrets (deposit keys, recipient secrets) are stored unencrypted in {}; give --master-key-file or SEALPOST_MASTER_KEY to encrypt them",
                disk.dir().display()
            );
        }
        Arc::new(disk)
    };
    let handle = sealpost_relay::start(config, store)
        .await
        .map_err(|e| e.to_string())?;
    if handle.generated_cert() {
        eprintln!(
            "generated a self-signed certificate in {}",
            a.data_dir.join("tls").display()
        );
    }
    eprintln!(
        "crypto engine: {} (ChaCha20-Poly1305; AES-256-GCM through ring)",
        sealpost_core::engine::Engine::active().describe()
    );
    eprintln!(
        "sealpost relay listening on {} (QUIC, ALPN sealpost/1)",
        handle.local_addr()
    );
    println!("certificate pin (SHA-256): {}", hex::encode(handle.pin()));
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("shutting down");
    handle.shutdown().await;
    Ok(())
}

fn resolve_pin(r: &RelayArgs) -> Result<[u8; 32], String> {
    if let Some(p) = &r.pin {
        return tls::parse_pin(p).map_err(|e| e.to_string());
    }
    let dir = r.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    if !cert.exists() {
        return Err(format!(
            "no --pin given and no relay certificate at {}; pass the pin `serve` printed",
            cert.display()
        ));
    }
    let id = tls::load_identity(&cert, &dir.join("key.pem")).map_err(|e| e.to_string())?;
    Ok(id.pin())
}

async fn connect(r: &RelayArgs) -> Result<Client, String> {
    let pin = resolve_pin(r)?;
    Client::connect_pinned(&r.relay, pin)
        .await
        .map_err(|e| e.to_string())
}

async fn create(r: RelayArgs, suite: Suite, out: PathBuf) -> CmdResult {
    if out.exists() {
        return Err(format!("{} exists; choose another --out", out.display()));
    }
    let client = connect(&r).await?;
    let mailbox = client.create(suite).await.map_err(|e| e.to_string())?;
    mailbox_file::write(&out, &mailbox).map_err(|e| e.to_string())?;
    let inv = mailbox.invitation().encode().map_err(|e| e.to_string())?;
    eprintln!(
        "mailbox created; recipient secrets written to {} (keep it private)",
        out.display()
    );
    eprintln!("share this invitation with senders (it lets them deposit, not read):");
    println!("{inv}");
    client.close().await;
    Ok(())
}

async fn delete(path: PathBuf) -> CmdResult {
    let mailbox = mailbox_file::read(&path).map_err(|e| e.to_string())?;
    let client = Client::connect_pinned(&mailbox.relay, mailbox.pin)
        .await
        .map_err(|e| e.to_string())?;
    client
        .delete(&mailbox.access())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("mailbox deleted");
    client.close().await;
    Ok(())
}

async fn send(invitation: String, message: String) -> CmdResult {
    let inv = Invitation::parse(&invitation).map_err(|e| e.to_string())?;
    let content = if message == "-" {
        use std::io::Read;
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading standard input: {e}"))?;
        buf
    } else {
        message.into_bytes()
    };
    let client = Client::connect_pinned(&inv.relay, inv.pin)
        .await
        .map_err(|e| e.to_string())?;
    let info = client.info().await.map_err(|e| e.to_string())?;
    let envelope =
        e2e::seal_for_invitation(&inv, &info.limits.sizes, &content).map_err(|e| e.to_string())?;
    let status = client.deposit(envelope).await.map_err(|e| e.to_string())?;
    client.close().await;
    if status.is_success() {
        eprintln!("deposited: {status}");
        Ok(())
    } else {
        Err(format!("relay answered {status}"))
    }
}

async fn recv(path: PathBuf, follow: bool, wait: f64) -> CmdResult {
    let mailbox = mailbox_file::read(&path).map_err(|e| e.to_string())?;
    let client = Client::connect_pinned(&mailbox.relay, mailbox.pin)
        .await
        .map_err(|e| e.to_string())?;
    let mut sub = client
        .subscribe(&mailbox.access(), 64)
        .await
        .map_err(|e| e.to_string())?;
    let mut left = sub.pending_at_start();
    let idle = Duration::from_secs_f64(wait.max(0.0));
    let mut count = 0u64;
    loop {
        let next = if follow || left > 0 {
            sub.next().await
        } else {
            match tokio::time::timeout(idle, sub.next()).await {
                Ok(r) => r,
                Err(_) => break,
            }
        };
        let Some(d) = next.map_err(|e| e.to_string())? else {
            break;
        };
        left = left.saturating_sub(1);
        match mailbox.open(&d) {
            Ok(content) => println!("{}", String::from_utf8_lossy(&content)),
            Err(e) => eprintln!("message {} could not be opened: {e}", d.seq),
        }
        count += 1;
        sub.ack(d.seq).await.map_err(|e| e.to_string())?;
    }
    sub.finish();
    eprintln!("{count} message(s) received");
    client.close().await;
    Ok(())
}

async fn info(r: RelayArgs) -> CmdResult {
    let client = connect(&r).await?;
    let i = client.info().await.map_err(|e| e.to_string())?;
    println!("version: {}", i.version);
    println!(
        "suites: {}",
        i.suites
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("body sizes: {:?}", i.limits.sizes.as_slice());
    println!("max envelopes per mailbox: {}", i.limits.max_envelopes);
    println!("max bytes per mailbox: {}", i.limits.max_bytes);
    println!("retention: {} s", i.limits.retention_secs);
    println!("max window: {}", i.limits.max_window);
    println!("max frame: {}", i.limits.max_frame);
    client.close().await;
    Ok(())
}
