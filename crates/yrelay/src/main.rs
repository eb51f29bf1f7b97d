use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use yrelay::config::{Cli, Command, DEFAULT_STORE};
use yrelay::server::{Server, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let outcome: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => {
            async {
                let config = args.resolve()?;
                let server = Server::bind(config).await?;
                server.run(shutdown_signal()).await?;
                Ok(())
            }
            .await
        }
        Command::Worker(args) => {
            async {
                yrelay::server::run_worker(args.resolve()?, shutdown_signal()).await?;
                Ok(())
            }
            .await
        }
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
