//! `sealpost-relay`: run a relay (`serve`), and the person-facing client commands
//! (`mailbox create`, `send`, `recv`, `info`, `mailbox delete`).
#![forbid(unsafe_code)]

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sealpost_client::{Client, mailbox_file, tls};
use sealpost_core::Suite;
use sealpost_core::e2e;
use sealpost_core::engine::Engine;
use sealpost_core::invitation::{Invitation, RelayTrust, check_relays};
use sealpost_core::status::DepositStatus;
use sealpost_relay::Relay;
use sealpost_relay::provenance::Provenance;
use sealpost_relay::settings::{LogFormat, Settings, Validated};
use sealpost_relay::store::disk::{DiskOptions, DiskStore};
use std::path::PathBuf;
use std::process::ExitCode;
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
        /// Deposit through this relay (HOST:PORT) instead of directly: two-hop forwarding. The
        /// mailbox's relay then sees that relay's address, not this machine's; that relay sees
        /// this machine's address but neither the mailbox nor the message. Needs an invitation
        /// with a forwarding key (version 4) and a relay with forwarding on.
        #[arg(long)]
        via: Option<String>,
        /// SHA-256 pin of the --via relay's public key (64 hex digits, printed by its
        /// `serve`); without it, the relay's certificate must come from a CA for its name.
        #[arg(long, requires = "via")]
        via_key_pin: Option<String>,
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
    /// Re-encrypt the mailbox secrets of a stopped relay's store under a new master key (the
    /// relay must be stopped; start it with the new key afterwards).
    ///
    /// With `--cluster-nodes`, the cluster store's secrets in Valkey instead (every relay of
    /// the cluster stopped): mailbox records, the deposit-id key and the at-rest keyring.
    RotateMasterKey {
        /// The relay's data directory (its store, at-rest keyring and forwarding key); with
        /// `--cluster-nodes`, only its forwarding key is re-sealed.
        #[arg(long, required_unless_present = "cluster_nodes")]
        data_dir: Option<PathBuf>,
        /// The current master key file; omit it if the secrets are not encrypted yet.
        #[arg(long)]
        old_key_file: Option<PathBuf>,
        /// The new master key file (64 hex digits; `openssl rand -hex 32`).
        #[arg(long)]
        new_key_file: PathBuf,
        /// Valkey cluster nodes (`HOST:PORT,...`): rotate the cluster store's secrets.
        #[arg(long, value_delimiter = ',')]
        cluster_nodes: Vec<String>,
        /// A forwarding key file kept outside the data directory (the `forward_key_file`
        /// setting) to re-seal too.
        #[arg(long)]
        forward_key_file: Option<PathBuf>,
    },
    /// Replace the forwarding key (the settings' forward_key_file, else DATA_DIR/forward.key)
    /// with a new one (the staged one, if any), keeping the old one for
    /// forward_key_overlap_secs so that invitations carrying it keep working; the relay
    /// announces the new key from its next start.
    RotateForwardKey {
        /// TOML settings file, as `serve` reads it (with the environment and flags over it).
        #[arg(long, env = "SEALPOST_CONFIG")]
        config: Option<PathBuf>,
        /// Drop the old key (and any earlier one) at once instead of keeping it for the
        /// overlap: after a compromise. Invitations carrying it stop working for forwarded
        /// deposits. A staged key is discarded too (it was in the same file): the new key is
        /// a fresh one.
        #[arg(long)]
        drop_previous: bool,
        /// Only stage a new key: relays accept it from their next start but go on announcing
        /// the current one until the next `rotate-forward-key`. For relays sharing one key
        /// file: stage, copy the file to every relay, restart each, then rotate.
        #[arg(long, conflicts_with = "drop_previous")]
        stage: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Validate a settings file (with the environment and flags over it) and print the
    /// effective settings, secrets redacted.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
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
    /// Relay address, host:port (an IPv6 host in brackets). Repeat the flag, or give a
    /// comma-separated list, for the relays of one deployment (up to 8, sharing a store and
    /// a certificate or CA): the client uses any that answers, and `mailbox create` writes
    /// them all into the invitation.
    #[arg(
        long,
        default_value = "127.0.0.1:4433",
        env = "SEALPOST_RELAY",
        value_delimiter = ','
    )]
    relay: Vec<String>,
    /// SHA-256 pin of the relay certificate (64 hex digits). Without it, the pin of the
    /// certificate in --data-dir is used (for a relay on this machine).
    #[arg(long, env = "SEALPOST_PIN")]
    pin: Option<String>,
    /// SHA-256 pin of the relay's public key (its certificate's SubjectPublicKeyInfo; 64 hex
    /// digits, printed by `serve`), which survives certificate renewals with the same key.
    #[arg(long, env = "SEALPOST_KEY_PIN", conflicts_with = "pin")]
    key_pin: Option<String>,
    /// Data directory of a local relay, whose certificate gives the key pin when no pin is
    /// given (its private key is not read).
    #[arg(long, default_value = "sealpost-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML settings file (every key is also a flag and a SEALPOST_... variable; flags win
    /// over the environment, which wins over the file). See deploy/sealpost.toml.
    #[arg(long, env = "SEALPOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// Merges file, environment and flags; `None` file means defaults under env and flags.
/// `matches` are those of the subcommand `name`, to name a bad setting as it was written.
fn load_settings(
    file: Option<&PathBuf>,
    given: &Settings,
    name: &str,
    matches: Option<&clap::ArgMatches>,
) -> Result<Validated, String> {
    let mut provenance = Provenance::new();
    let base = match file {
        Some(f) => {
            let s = Settings::from_file(f).map_err(|e| e.to_string())?;
            provenance = provenance.file(f, &s);
            s
        }
        None => Settings::default(),
    };
    if let (Some(cmd), Some(m)) = (Cli::command().find_subcommand(name), matches) {
        provenance = provenance.clap(cmd, m);
    }
    base.overlaid(given)
        .validate()
        .map_err(|e| provenance.explain(e).to_string())
}

/// The target of the lines `serve` always prints, whatever `SEALPOST_LOG` filters: what it
/// listens on, its store, its pin, shutting down, stopped.
const ANNOUNCE: &str = "sealpost_relay::announce";

/// A line `serve` always prints (through the log, so that it is JSON when the log is).
macro_rules! say {
    ($($arg:tt)*) => { tracing::info!(target: "sealpost_relay::announce", $($arg)*) };
}

/// Starts logging to standard error in `format`: colour only on a terminal (and never with
/// `NO_COLOR` set). An unreadable `SEALPOST_LOG` is reported, not ignored.
fn init_logging(format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let (filter, bad_filter) = match std::env::var("SEALPOST_LOG") {
        Ok(spec) => match tracing_subscriber::EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new(DEFAULT_LOG),
                Some(format!("SEALPOST_LOG={spec:?} is not a log filter ({e})")),
            ),
        },
        Err(_) => (tracing_subscriber::EnvFilter::new(DEFAULT_LOG), None),
    };
    let announce = format!("{ANNOUNCE}=info")
        .parse()
        .map_err(|e| format!("log directive: {e}"))?;
    let ansi = format == LogFormat::Human
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter.add_directive(announce))
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
    bad_filter.map_or(Ok(()), Err)
}

/// The log filter without `SEALPOST_LOG`.
const DEFAULT_LOG: &str = "info,fjall=warn,lsm_tree=warn";

fn master_key(file: Option<&PathBuf>) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, String> {
    sealpost_relay::master_key::load(file.map(PathBuf::as_path)).map_err(|e| e.to_string())
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// `serve`'s last word on failure: through the log once it has started (a JSON line in JSON
/// format), so that no plain line ends a JSON log.
fn fail_logged(msg: impl std::fmt::Display) -> ExitCode {
    tracing::error!(target: "sealpost_relay::announce", "stopped: {msg}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    // Parsed in two steps to keep the matches: they say which settings came from flags and
    // which from the environment.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = |name: &str| matches.subcommand_matches(name);
    // `serve`'s settings are read once, before logging starts, since they choose its format.
    let serve_settings = match &cli.cmd {
        Cmd::Serve(a) => match load_settings(a.config.as_ref(), &a.settings, "serve", sub("serve"))
        {
            Ok(v) => Some(v),
            Err(e) => {
                // The format the flags or the environment asked for, if the settings that
                // failed were not readable far enough to know the file's.
                let format = a.settings.log_format.unwrap_or(LogFormat::Human);
                if format == LogFormat::Json && init_logging(format).is_ok() {
                    return fail_logged(e);
                }
                return fail(e);
            }
        },
        _ => None,
    };
    let format = serve_settings
        .as_ref()
        .map_or(LogFormat::Human, |v| v.log_format);
    if let Err(e) = init_logging(format) {
        return if serve_settings.is_some() {
            fail_logged(e)
        } else {
            fail(e)
        };
    }
    let r = match cli.cmd {
        Cmd::Serve(_) => match serve_settings {
            Some(v) => match serve(v).await {
                Ok(()) => return ExitCode::SUCCESS,
                Err(e) => return fail_logged(e),
            },
            None => unreachable!("read above for serve"),
        },
        Cmd::Mailbox(MailboxCmd::Create { relay, suite, out }) => create(relay, suite, out).await,
        Cmd::Mailbox(MailboxCmd::Delete { mailbox_file }) => delete(mailbox_file).await,
        Cmd::Send {
            invitation,
            message,
            via,
            via_key_pin,
        } => send(invitation, message, via.map(|v| (v, via_key_pin))).await,
        Cmd::Recv {
            mailbox_file,
            follow,
            wait,
        } => recv(mailbox_file, follow, wait).await,
        Cmd::Info(relay) => info(relay).await,
        Cmd::CheckConfig { file, settings } => check_config(file, settings, sub("check-config")),
        Cmd::RotateForwardKey {
            config,
            drop_previous,
            stage,
            settings,
        } => rotate_forward_key(
            config,
            settings,
            drop_previous,
            stage,
            sub("rotate-forward-key"),
        ),
        Cmd::RotateMasterKey {
            data_dir,
            old_key_file,
            new_key_file,
            cluster_nodes,
            forward_key_file,
        } => {
            rotate(Rotation {
                data_dir,
                old_key_file,
                new_key_file,
                cluster_nodes,
                forward_key_file,
            })
            .await
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

type CmdResult = Result<(), String>;

fn check_config(file: PathBuf, given: Settings, matches: Option<&clap::ArgMatches>) -> CmdResult {
    let v = load_settings(Some(&file), &given, "check-config", matches)?;
    if let Some(f) = &v.master_key_file {
        master_key(Some(f))?;
    }
    // The certificate and key are checked as `serve` would load them: a pair that does not
    // belong together would otherwise start a relay no client can connect to.
    match sealpost_relay::server::check_tls(&v.relay).map_err(|e| e.to_string())? {
        Some(pin) => eprintln!("certificate and key: ok (pin {})", hex::encode(pin)),
        None => eprintln!("certificate: none yet; `serve` generates one at its first start"),
    }
    print!(
        "{}",
        v.to_toml(std::env::var_os("SEALPOST_MASTER_KEY").is_some())
    );
    eprintln!("{}: ok", file.display());
    Ok(())
}

/// What `rotate-master-key` was asked to do.
struct Rotation {
    data_dir: Option<PathBuf>,
    old_key_file: Option<PathBuf>,
    new_key_file: PathBuf,
    cluster_nodes: Vec<String>,
    forward_key_file: Option<PathBuf>,
}

async fn rotate(r: Rotation) -> CmdResult {
    // Read from the files only: SEALPOST_MASTER_KEY must not stand in for either key here.
    let old = r
        .old_key_file
        .as_ref()
        .map(|f| master_key(Some(f)))
        .transpose()?
        .flatten();
    let new = master_key(Some(&r.new_key_file))?.ok_or("the new master key file is empty")?;
    // Checked before anything is re-sealed, so that a typo does not leave a half-done rotation.
    if let Some(f) = r.forward_key_file.as_ref().filter(|f| !f.exists()) {
        return Err(format!("--forward-key-file {}: no such file", f.display()));
    }
    if !r.cluster_nodes.is_empty() {
        let old = old.as_ref().ok_or(
            "the cluster store always seals its secrets under a master key: give it with --old-key-file",
        )?;
        let done =
            sealpost_relay::store::cluster::rekey::rotate_master_key(&r.cluster_nodes, old, &new)
                .await
                .map_err(|e| e.to_string())?;
        eprintln!(
            "re-sealed in the Valkey cluster: {} mailbox records, {} the deposit-id key, {} at-rest keys (epoch keys and the dedupe key); {}",
            done.records,
            if done.prf {
                "and"
            } else {
                "not (already under the new key)"
            },
            done.keyring,
            if done.rewritten {
                "every node is rewriting its AOF and will replace its snapshot"
            } else {
                "NOT every node started an AOF rewrite (see the warnings): until one runs (BGREWRITEAOF, then BGSAVE), its files keep the values sealed under the old key"
            }
        );
        if let Some(dir) = &r.data_dir {
            reseal_forward_key(
                &dir.join(sealpost_relay::forward::key::FILE_NAME),
                Some(old),
                &new,
            )?;
        }
    } else if let Some(dir) = &r.data_dir {
        rotate_master_key(dir, old.as_ref(), &new)?;
    }
    if let Some(f) = &r.forward_key_file {
        reseal_forward_key(f, old.as_ref(), &new)?;
    }
    eprintln!("start the relays with the new master key");
    Ok(())
}

/// Re-seals a forwarding key file (if it is sealed and there is an old key).
fn reseal_forward_key(
    path: &std::path::Path,
    old: Option<&zeroize::Zeroizing<[u8; 32]>>,
    new: &zeroize::Zeroizing<[u8; 32]>,
) -> CmdResult {
    if let Some(old) = old
        && sealpost_relay::forward::key::ForwardKey::rotate_master_key(path, old, new)
            .map_err(|e| e.to_string())?
    {
        eprintln!(
            "re-sealed the forwarding key {} under the new master key",
            path.display()
        );
    }
    Ok(())
}

fn rotate_master_key(
    data_dir: &std::path::Path,
    old: Option<&zeroize::Zeroizing<[u8; 32]>>,
    new: &zeroize::Zeroizing<[u8; 32]>,
) -> CmdResult {
    let dir = data_dir.join("store");
    if !dir.join("version").exists() {
        return Err(format!("no relay store in {}", dir.display()));
    }
    let store = DiskStore::open(
        &dir,
        sealpost_relay::RelayLimits::default().quotas(),
        DiskOptions {
            master_key: old.cloned(),
            min_free_bytes: 0,
            ..DiskOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    // The at-rest keyring first: re-wrapping it is idempotent, so a failure of either step
    // is mended by running the command again.
    let keys = data_dir.join(sealpost_relay::open::KEYRING_FILE);
    if let (true, Some(old)) = (keys.exists(), old) {
        let k = sealpost_relay::store::at_rest::slots::rotate_master_key(&keys, old, new)
            .map_err(|e| e.to_string())?;
        eprintln!(
            "re-wrapped {k} at-rest keys (epoch keys and the dedupe key) in {} under the new master key",
            keys.display()
        );
    }
    // The forwarding key in the data directory is sealed under the master key too; without
    // it the relay would not start after the rotation. (One kept elsewhere is named with
    // --forward-key-file.)
    reseal_forward_key(
        &data_dir.join(sealpost_relay::forward::key::FILE_NAME),
        old,
        new,
    )?;
    let n = store.rotate_master_key(new).map_err(|e| e.to_string())?;
    eprintln!(
        "re-encrypted the secrets of {n} mailboxes in {} under the new master key",
        dir.display()
    );
    Ok(())
}

fn rotate_forward_key(
    file: Option<PathBuf>,
    given: Settings,
    drop_previous: bool,
    stage: bool,
    matches: Option<&clap::ArgMatches>,
) -> CmdResult {
    use sealpost_relay::forward::{ForwardKeys, key::FILE_NAME};
    let v = load_settings(file.as_ref(), &given, "rotate-forward-key", matches)?;
    // The master key as `serve` finds it (the settings' file, else SEALPOST_MASTER_KEY).
    let master = master_key(v.master_key_file.as_ref())?;
    let f = &v.relay.forward;
    let path = f
        .key_file
        .clone()
        .unwrap_or_else(|| v.relay.data_dir.join(FILE_NAME));
    if stage {
        let (key, replaced) = ForwardKeys::stage(&path, master.as_deref(), f.key_overlap)
            .map_err(|e| e.to_string())?;
        println!("staged forwarding key: {}", hex::encode(key));
        eprintln!(
            "staged a forwarding key in {}{}; relays accept it from their next start and \
             announce it after the next rotate-forward-key (a deployment sharing the file: copy \
             it to every relay and restart each first)",
            path.display(),
            if replaced {
                " (replacing the one staged before)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let r = ForwardKeys::rotate(&path, master.as_deref(), f.key_overlap, !drop_previous)
        .map_err(|e| e.to_string())?;
    println!("new forwarding key: {}", hex::encode(r.public));
    if r.promoted {
        eprintln!("the new key is the one staged before");
    }
    if r.discarded_staged {
        eprintln!(
            "the key staged before was in the same file and is discarded too; the new key is a fresh one"
        );
    }
    for (key, until) in &r.kept {
        eprintln!(
            "previous key {} accepted until {until} (Unix time)",
            hex::encode(key)
        );
    }
    eprintln!(
        "rotated the forwarding key in {} ({} previous keys kept, {} dropped); restart the relay \
         to announce the new key (a deployment sharing the file: copy it to every relay first)",
        path.display(),
        r.kept.len(),
        r.dropped
    );
    Ok(())
}

async fn serve(v: Validated) -> CmdResult {
    // Signals are caught from the very start: a SIGTERM that arrives while the relay starts
    // (or just after its last start-up line) is a clean stop, not the default death by signal.
    let signals = Signals::install()?;
    // The recorder first, so that everything the relay records from its start is exported.
    let prom = sealpost_relay::admin::install_recorder().map_err(|e| e.to_string())?;
    // Then the admin listener, before the store opens: a long start (a big store to recover,
    // secrets to seal into a fresh copy) answers /healthz, so that a startup probe does not
    // kill it half-way; /servingz and /readyz say "starting" until the relay is up.
    let readiness = sealpost_relay::admin::Readiness::starting();
    let (admin_addr, _admin) = sealpost_relay::admin::serve(v.admin, prom, readiness.clone())
        .await
        .map_err(|e| e.to_string())?;
    let relay = Relay::open(&v).await.map_err(|e| e.to_string())?;
    say!("{}", relay.store_announcement());
    if let Some(dir) = relay.unencrypted_secrets() {
        tracing::warn!(
            target: "sealpost_relay::announce",
            "no master key: mailbox secrets (deposit keys, recipient secrets) are stored unencrypted in {}; give --master-key-file or SEALPOST_MASTER_KEY to encrypt them",
            dir.display()
        );
    }
    let handle = relay.handle();
    if handle.generated_cert() {
        say!(
            "generated a self-signed certificate in {}",
            v.relay.data_dir.join("tls").display()
        );
    }
    say!(
        "crypto engine: {} (ChaCha20-Poly1305; AES-256-GCM through ring)",
        v.relay.engine.describe()
    );
    say!(
        "sealpost relay listening on {} (QUIC, ALPN sealpost/1)",
        handle.local_addr()
    );
    let pin = hex::encode(handle.pin());
    say!(pin = %pin, "certificate pin (SHA-256): {pin}");
    // Standard output carries the pin alone for scripts, except in JSON format, where every
    // line is JSON and the line above has it.
    if v.log_format == LogFormat::Human {
        println!("certificate pin (SHA-256): {pin}");
    }
    // Invitations made from now on pin the key, which renewals with the same key keep.
    match handle.key_pin() {
        Ok(k) => {
            let key_pin = hex::encode(k);
            say!(key_pin = %key_pin, "key pin (SHA-256 of the SubjectPublicKeyInfo): {key_pin}");
        }
        Err(e) => tracing::warn!(target: "sealpost_relay::announce", "no key pin: {e}"),
    }
    let forward_key = hex::encode(handle.forward_key());
    say!(
        forward_key = %forward_key,
        "forwarding key (X25519; version 4 invitations carry it): {forward_key}; forwarding for clients is {}",
        if v.relay.forward.enabled { "on" } else { "off" }
    );
    readiness.started(&handle.readiness());
    // Announced last (scripts and tests wait for this line), though it listens from the start.
    say!("admin HTTP on http://{admin_addr} (/metrics, /healthz, /servingz, /readyz)");
    let stop = wait_for_stop(signals, handle).await;
    say!("shutting down (at most {} s)", v.shutdown_timeout.as_secs());
    // One budget for the connections' grace period and the store's final flush.
    let stopped = relay.shutdown(v.shutdown_timeout).await;
    stop?;
    stopped.map_err(|e| e.to_string())?;
    say!("stopped");
    Ok(())
}

/// The signals `serve` answers, caught from installation on (tokio keeps one that arrives
/// before anyone waits for it).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?,
            int: signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?,
            hup: signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?,
        })
    }
}

/// Runs until SIGTERM or SIGINT (or a store failure); SIGHUP reloads the certificate and key.
async fn wait_for_stop(signals: Signals, handle: &sealpost_relay::RelayHandle) -> CmdResult {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            why = handle.store_failed() => return Err(format!(
                "a write to the store failed ({why}); stopped so that the supervisor restarts the \
                 relay, which recovers from disk"
            )),
            _ = hup.recv() => match handle.reload_certificate() {
                Ok(pin) => tracing::info!(pin = %hex::encode(pin), "certificate reloaded"),
                Err(e) => tracing::warn!(error = %e, "certificate reload failed; keeping the old one"),
            },
        }
    }
}

/// How to trust the relay: `--key-pin`, `--pin`, or the key pin of the certificate in the
/// local data directory (from the certificate alone: the private key is not read).
fn resolve_trust(r: &RelayArgs) -> Result<tls::Trust, String> {
    if let Some(p) = &r.key_pin {
        return Ok(tls::Trust::KeyPin(
            tls::parse_pin(p).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(p) = &r.pin {
        return Ok(tls::Trust::Pin(
            tls::parse_pin(p).map_err(|e| e.to_string())?,
        ));
    }
    let dir = r.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    if !cert.exists() {
        return Err(format!(
            "no --key-pin or --pin given and no relay certificate at {}; pass a pin `serve` printed",
            cert.display()
        ));
    }
    Ok(tls::Trust::KeyPin(
        tls::key_pin_of_file(&cert).map_err(|e| e.to_string())?,
    ))
}

async fn connect(r: &RelayArgs) -> Result<Client, String> {
    // Checked before connecting, so that `mailbox create` does not create a mailbox whose
    // invitation cannot be written. The CLI's invitations pin the relays' key or trust a CA,
    // never the whole certificate, so the trust given here does not restrict the list.
    check_relays(&r.relay, RelayTrust::CaForHost).map_err(|e| format!("--relay: {e}"))?;
    Client::connect_any(&r.relay, resolve_trust(r)?)
        .await
        .map_err(|e| e.to_string())
}

async fn create(r: RelayArgs, suite: Suite, out: PathBuf) -> CmdResult {
    if out.exists() {
        return Err(format!("{} exists; choose another --out", out.display()));
    }
    let client = connect(&r).await?;
    let mut mailbox = client.create(suite).await.map_err(|e| e.to_string())?;
    // The relay's forwarding key goes into the invitation (version 4), so that senders may
    // deposit through another relay; a relay that predates forwarding has none.
    mailbox.forward_key = client.forward_key().await.map_err(|e| e.to_string())?;
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
    let client = Client::connect_trusting_any(&mailbox.relays, mailbox.trust)
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

async fn send(
    invitation: String,
    message: String,
    via: Option<(String, Option<String>)>,
) -> CmdResult {
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
    let (status, tries) = match via {
        Some((via, pin)) => send_via(&inv, &content, &via, pin.as_deref()).await?,
        None => send_direct(&inv, &content).await?,
    };
    if status.is_success() {
        eprintln!("deposited: {status}");
        Ok(())
    } else if status == DepositStatus::RateLimited {
        Err(format!(
            "relay refused: {status} ({tries} times in 10 s): {}",
            status.advice()
        ))
    } else {
        Err(format!("relay refused: {status}: {}", status.advice()))
    }
}

/// Deposits `content` into the invitation's mailbox through the relay at `via`.
async fn send_via(
    inv: &Invitation,
    content: &[u8],
    via: &str,
    pin: Option<&str>,
) -> Result<(DepositStatus, u32), String> {
    let mut target =
        sealpost_client::ForwardTarget::from_invitation(inv).map_err(|e| e.to_string())?;
    let trust = match pin {
        Some(p) => tls::Trust::KeyPin(tls::parse_pin(p).map_err(|e| e.to_string())?),
        None => tls::Trust::Roots(tls::default_roots()),
    };
    let client = Client::connect(via, trust)
        .await
        .map_err(|e| format!("--via {via}: {e}"))?;
    let info = client
        .forward_info(&mut target)
        .await
        .map_err(|e| e.to_string())?;
    let envelope = e2e::seal_for_invitation(&Engine::ring(), inv, &info.limits.sizes, content)
        .map_err(|e| e.to_string())?;
    let r = client
        .forward_deposit_patiently(&target, envelope, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string());
    client.close().await;
    r
}

/// Deposits `content` into the invitation's mailbox directly.
async fn send_direct(inv: &Invitation, content: &[u8]) -> Result<(DepositStatus, u32), String> {
    let client = Client::connect_trusting_any(&inv.relays, inv.trust)
        .await
        .map_err(|e| e.to_string())?;
    let info = client.info().await.map_err(|e| e.to_string())?;
    let envelope = e2e::seal_for_invitation(&Engine::ring(), inv, &info.limits.sizes, content)
        .map_err(|e| e.to_string())?;
    // A mailbox over its deposit rate says when to come back; a person running `send`
    // would rather wait a few seconds than retry by hand.
    let r = client
        .deposit_patiently(envelope, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string());
    client.close().await;
    r
}

async fn recv(path: PathBuf, follow: bool, wait: f64) -> CmdResult {
    let mailbox = mailbox_file::read(&path).map_err(|e| e.to_string())?;
    let client = Client::connect_trusting_any(&mailbox.relays, mailbox.trust)
        .await
        .map_err(|e| e.to_string())?;
    // A relay restart is ridden through: the subscription reconnects and resumes from the
    // acknowledged position, printing nothing twice. Following, wait longer for the relay.
    let patience = Duration::from_secs(if follow { 60 } else { 10 });
    let mut sub = client
        .subscribe_resuming(&mailbox.access(), 64, patience)
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
    if let Some(k) = client.forward_key().await.map_err(|e| e.to_string())? {
        println!("forwarding key: {}", hex::encode(k));
    }
    client.close().await;
    Ok(())
}
