use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;
use yrelay::auth::{Grant, Mode, SigningKey, mint};
use yrelay::config::{Cli, Command, DEFAULT_STORE};
use yrelay::server::{Server, shutdown_signal};

/// Stack of every runtime thread. yrs deletes and garbage-collects nested
/// types recursively; new updates are bounded (`nesting::MAX_TYPE_DEPTH`),
/// but a document stored before that bound may nest deeper, and must still
/// load and compact. 64 MiB holds hundreds of thousands of levels; it is
/// address space, not memory, until used.
const THREAD_STACK: usize = 64 << 20;

/// Allocations of 1 MiB or more get a mapping of their own, returned to
/// the system when freed. glibc otherwise raises this threshold (up to
/// 32 MiB) after the first such free, and the transient copies made while a
/// large document loads or joiners sync (the snapshot read, its decode, an
/// encode) then stay in the heap: a loaded 20 MB document held 4× its size
/// in RSS instead of 2× (docs/benchmarks.md, "Memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1 << 20;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The subcommand's own matches tell which settings were given.
    let given = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let outcome: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => {
            async {
                let config = args.resolve(&given)?;
                let server = Server::bind(config).await?;
                server.run(shutdown_signal()).await?;
                Ok(())
            }
            .await
        }
        Command::Worker(args) => {
            async {
                yrelay::server::run_worker(args.resolve(&given)?, shutdown_signal()).await?;
                Ok(())
            }
            .await
        }
        Command::Token(args) => {
            let key = match (args.jwt_secret, args.jwt_private_key) {
                (Some(secret), None) => Ok(SigningKey::Secret(secret)),
                (None, Some(path)) => Ok(SigningKey::PrivateKey(path)),
                _ => Err("yrelay token needs --jwt-secret or --jwt-private-key".into()),
            };
            key.and_then(|key| {
                let access = args
                    .space
                    .map(|space| Grant {
                        space,
                        doc: args.doc.unwrap_or_else(|| "*".into()),
                        mode: if args.read_only { Mode::Ro } else { Mode::Rw },
                    })
                    .into_iter()
                    .collect();
                let ttl = i64::try_from(args.ttl).unwrap_or(i64::MAX / 2);
                let token = mint(&key, &args.sub, access, ttl)?;
                println!("{token}");
                Ok(())
            })
        }
        Command::Doc(args) => yrelay::cli::run(args).await,
        Command::Backlog(args) => yrelay::cli::backlog(args).await,
        Command::Migrate(args) => {
            async {
                let url = args.store.unwrap_or_else(|| DEFAULT_STORE.into());
                let store = yrelay::store::open(&url).await?;
                tracing::info!("store {} ({url}) is migrated", store.name());
                Ok(())
            }
            .await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
