//! `roster config set|get|watch`: dynamic configuration from the command line.

use crate::registry_cmd::ConnectArgs;
use anyhow::{Context, Result, bail};
use roster::config::{ConfigEvent, Format, Options};
use roster_api::etcdserverpb::{PutRequest, RangeRequest};
use std::io::Write;
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The format (JSON, TOML or YAML) comes from the key's suffix (.json, .toml,
.yaml, .yml) unless --format names it. Watchers built with roster::config
pick up a new value at once; a value that does not parse is refused here,
before it can reach them.

Examples:
  roster config set /config/app.toml --file app.toml
  roster config set /config/limits.json '{\"rps\": 500}'
  roster config get /config/app.toml
  roster config get /config/ --prefix
  roster config watch /config/app.toml")]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
    #[command(flatten)]
    conn: ConnectArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Write a value after checking that it parses.
    Set {
        /// The key, e.g. `/config/app.toml`.
        key: String,
        /// The value; or give --file.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file (`-` for stdin).
        #[arg(long, short)]
        file: Option<std::path::PathBuf>,
        /// json, toml or yaml, when the key's suffix does not say.
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Print a value as stored (or, with --prefix, every key under it).
    Get {
        key: String,
        /// Print every key starting with KEY, each followed by its value.
        #[arg(long)]
        prefix: bool,
    },
    /// Print the value, then every new value as it is written. Values that
    /// would be rejected by a watcher are reported on stderr.
    Watch {
        key: String,
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format {s:?}: use json, toml or yaml"))
}

fn format_of(key: &str, explicit: Option<Format>) -> Result<Format> {
    roster::config::format_for(key, explicit).map_err(anyhow::Error::msg)
}

pub async fn run(args: ConfigArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let client = args.conn.client()?;
    match args.command {
        ConfigCommand::Set { key, value, file, format } => {
            let format = format_of(&key, format)?;
            let value = match (value, file) {
                (Some(v), _) => v,
                (None, Some(path)) if path.as_os_str() == "-" => {
                    std::io::read_to_string(std::io::stdin()).context("cannot read the value from stdin")?
                }
                (None, Some(path)) => {
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
                }
                (None, None) => unreachable!("clap requires a value or --file"),
            };
            roster::config::check_value(format, value.as_bytes()).map_err(anyhow::Error::msg)?;
            let put = PutRequest {
                key: key.clone().into_bytes().into(),
                value: value.clone().into_bytes().into(),
                ..Default::default()
            };
            let resp = client.put(put).await.with_context(|| format!("cannot write {key}"))?;
            let rev = resp.header.map_or(0, |h| h.revision);
            println!("{key}: {} bytes of {format} written at revision {rev}", value.len());
        }
        ConfigCommand::Get { key, prefix } => {
            let range_end = if prefix { roster_api::range::prefix_end(key.as_bytes()) } else { Vec::new() };
            let req = RangeRequest {
                key: key.clone().into_bytes().into(),
                range_end: range_end.into(),
                ..Default::default()
            };
            let resp = client.range(req).await.with_context(|| format!("cannot read {key}"))?;
            if resp.kvs.is_empty() {
                bail!("{key} is not set");
            }
            let mut out = std::io::stdout().lock();
            for kv in &resp.kvs {
                if prefix {
                    writeln!(out, "{}", String::from_utf8_lossy(&kv.key))?;
                }
                out.write_all(&kv.value)?;
                if !kv.value.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
        }
        ConfigCommand::Watch { key, format } => {
            let mut opts = Options::<serde::de::IgnoredAny>::new();
            if let Some(f) = format {
                opts = opts.format(f);
            }
            let cfg = opts.watch(&client, &key).await?;
            // Subscribe before showing the value, so that no change after
            // it can slip by unprinted.
            let mut events = Box::pin(cfg.changes());
            let mut shown = cfg.revision();
            print_value(shown, &cfg.raw());
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        // Print the value in effect, once per revision; a
                        // later value's own event prints that one.
                        Some(ConfigEvent::Updated { revision, .. }) if cfg.revision() == revision && revision > shown => {
                            shown = revision;
                            print_value(revision, &cfg.raw());
                        }
                        Some(ConfigEvent::Updated { .. }) => {}
                        Some(ConfigEvent::Rejected { revision, error, .. }) => {
                            eprintln!("rejected at revision {revision}: {error} (watchers keep the value above)");
                        }
                        Some(ConfigEvent::Deleted { revision, .. }) => {
                            eprintln!("deleted at revision {revision} (watchers keep the value above)");
                        }
                        None => bail!("the watch ended"),
                    },
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    Ok(())
}

fn print_value(revision: i64, raw: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# revision {revision}");
    let _ = write!(out, "{raw}");
    if !raw.ends_with('\n') {
        let _ = writeln!(out);
    }
    let _ = out.flush();
}
