//! `yrelay doc ...`: the REST API's document operations against a store
//! (and the shared log, when instances use one), without a server. They go
//! through a [`DocHub`] like the REST API does, so running instances see a
//! deleted or imported document the same way.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use yrelay_protocol::DocAddress;
use yrelay_protocol::json::{doc_from_update, doc_to_json, json_to_update_with_progress};
use yrs::StateVector;

use crate::compactor::measure_backlog;
use crate::config::{BacklogArgs, DEFAULT_STORE, DocAction, DocArgs, ExportFormat};
use crate::hub::{AwarenessBounds, DocHub, Durability, HubConfig, RestoreTarget, Writer};
use crate::vocab::new_instance_id;
use crate::{log, store};

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn address(path: &str) -> Result<DocAddress, Box<dyn std::error::Error>> {
    DocAddress::parse_path(path).map_err(|e| format!("{path:?}: {e}").into())
}

/// `yrelay backlog`: prints `{"docs", "updates"}` the log holds beyond the
/// store, and fails while there are any (so a script can wait for 0 before
/// it retires or flushes the log).
pub async fn backlog(args: BacklogArgs) -> CliResult {
    let store = store::open(args.store.as_deref().unwrap_or(DEFAULT_STORE)).await?;
    let log = log::open(
        args.log.as_deref().unwrap_or("local"),
        1,
        0,
        new_instance_id(),
    )
    .await?;
    let backlog = measure_backlog(&*store, &*log).await?;
    println!(
        "{}",
        serde_json::json!({ "docs": backlog.docs, "updates": backlog.updates })
    );
    if backlog.updates > 0 {
        return Err(format!(
            "{} updates of {} documents are in the log but not yet in the store",
            backlog.updates, backlog.docs
        )
        .into());
    }
    Ok(())
}

pub async fn run(args: DocArgs) -> CliResult {
    let store = store::open(args.store.as_deref().unwrap_or(DEFAULT_STORE)).await?;
    let instance = new_instance_id();
    let log = log::open(args.log.as_deref().unwrap_or("local"), 1, 0, instance).await?;
    let hub = DocHub::new(
        store,
        log,
        HubConfig {
            durability: Durability::Store,
            idle_unload: Duration::from_secs(60),
            subscriber_queue: 16,
            // The command line relays no presence.
            awareness: AwarenessBounds {
                per_connection: 0,
                per_doc: 0,
            },
            instance,
            // The serve default (`--history-exact-secs`).
            history_exact: Duration::from_secs(86_400),
            // The command line's changes are told by the servers' webhooks
            // only as far as those see them.
            hooks: None,
        },
    );
    let mut out = std::io::stdout().lock();
    match args.action {
        DocAction::List { space, after } => {
            yrelay_protocol::address::check_space_id(&space)?;
            for meta in hub.list(&space, after).await? {
                let line = serde_json::json!({
                    "doc": meta.doc, "title": meta.title, "blocked": meta.blocked,
                    "createdAt": meta.created_at, "updatedAt": meta.updated_at, "size": meta.size,
                });
                writeln!(out, "{line}")?;
            }
        }
        DocAction::Export {
            doc,
            format,
            at: Some(at),
        } => {
            let addr = address(&doc)?;
            let past = hub.state_at(&addr, at).await?;
            eprintln!(
                "export {addr}: as at {}{}",
                past.timestamp_ms,
                if past.exact {
                    ""
                } else {
                    " (the newest version then)"
                }
            );
            match format {
                ExportFormat::Json => {
                    let doc = doc_from_update(&past.state)?;
                    let json = doc_to_json(&doc)?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
                ExportFormat::Update => out.write_all(&past.state)?,
            }
        }
        DocAction::Export { doc, format, .. } => {
            let addr = address(&doc)?;
            match format {
                ExportFormat::Json => {
                    let json = hub
                        .export_json(&addr)
                        .await?
                        .ok_or_else(|| format!("document {addr} does not exist"))?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
                ExportFormat::Update => {
                    let update = hub
                        .export_update(&addr, &StateVector::default())
                        .await?
                        .ok_or_else(|| format!("document {addr} does not exist"))?;
                    out.write_all(&update)?;
                }
            }
        }
        DocAction::Import { doc, file, root } => {
            let addr = address(&doc)?;
            let started = Instant::now();
            let mut text = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut text)?;
            } else {
                text = std::fs::read(&file)?;
            }
            eprintln!("import {addr}: read {} bytes", text.len());
            let value: serde_json::Value = serde_json::from_slice(&text)?;
            let mut shown = 0;
            let update = json_to_update_with_progress(&root, value, |done, total| {
                let percent = done * 100 / total.max(1);
                if percent >= shown + 10 || done == total {
                    shown = percent;
                    eprintln!("import {addr}: {done}/{total} entries ({percent}%)");
                }
            })?;
            eprintln!("import {addr}: writing a {} byte document", update.len());
            match hub.import(&addr, update).await? {
                Some(_) => eprintln!(
                    "import {addr}: done in {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
                None => return Err(format!("document {addr} already exists").into()),
            }
        }
        DocAction::Delete { doc, purge } => {
            let addr = address(&doc)?;
            if !hub.delete(&addr, purge).await? {
                return Err(format!("document {addr} does not exist").into());
            }
            match purge {
                true => eprintln!("deleted {addr} for good"),
                false => eprintln!("moved {addr} to the trash (yrelay doc undelete {addr})"),
            }
        }
        DocAction::Undelete { doc } => {
            let addr = address(&doc)?;
            if !hub.undelete(&addr).await? {
                return Err(format!("document {addr} is not in the trash").into());
            }
            eprintln!("undeleted {addr}");
        }
        DocAction::Versions { doc } => {
            let addr = address(&doc)?;
            let versions = hub
                .versions(&addr)
                .await?
                .ok_or_else(|| format!("document {addr} does not exist"))?;
            for v in versions {
                let line = serde_json::json!({
                    "id": v.id, "timestamp": v.timestamp_ms, "label": v.label,
                    "editors": v.editors, "size": v.size,
                });
                writeln!(out, "{line}")?;
            }
        }
        DocAction::Restore { doc, version, at } => {
            let addr = address(&doc)?;
            let target = match (version, at) {
                (Some(id), _) => RestoreTarget::Version(id),
                (None, Some(at)) => RestoreTarget::At(at),
                (None, None) => return Err("give --version or --at".into()),
            };
            let restored = hub
                .restore(&addr, target, Writer::default())
                .await?
                .ok_or_else(|| format!("document {addr} does not exist"))?;
            eprintln!(
                "restored {addr}; to undo: yrelay doc restore {addr} --version {}",
                restored.version.id
            );
        }
    }
    Ok(())
}
