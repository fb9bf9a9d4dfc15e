//! Dynamic configuration kept in the registry.
//!
//! ```no_run
//! # async fn demo(client: roster::Client) -> roster::Result<()> {
//! #[derive(serde::Deserialize)]
//! struct App { workers: u32 }
//!
//! let app = roster::config::Options::<App>::new()
//!     .validate(|a| if a.workers == 0 { Err("workers must be at least 1".into()) } else { Ok(()) })
//!     .cache_file("/var/cache/app/app.toml.cache")
//!     .watch(&client, "/config/app.toml")
//!     .await?;
//! let workers = app.get().workers; // lock-free; always the last good value
//! # Ok(()) }
//! ```
//!
//! A value is decoded as JSON, TOML or YAML, chosen by the key's suffix
//! (`.json`, `.toml`, `.yaml`/`.yml`) or by [`Options::format`]. A new value
//! that does not decode or fails the validation hook is rejected: the last
//! good value stays and a [`ConfigEvent::Rejected`] says why. Nothing the
//! registry does empties a watched key: when it is unreachable the last
//! value stays (and [`Config::is_stale`] says so); when the key is deleted
//! the last value stays and [`ConfigEvent::Deleted`] reports it. With a
//! cache file, a process starts on the last good value even while the
//! registry is down, and catches up once it returns.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::mirror::{self, Mirror};
use crate::task::DropGuard;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use roster_api::mvccpb::{Event, KeyValue, event::EventType};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// How a value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
    Yaml,
}

impl Format {
    /// The format a key's suffix names, if any.
    pub fn from_key(key: &str) -> Option<Format> {
        let ext = key.rsplit_once('.')?.1;
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }

    /// Parses a format name: `json`, `toml`, `yaml` or `yml`.
    pub fn parse(name: &str) -> Option<Format> {
        Format::from_key(&format!(".{name}"))
    }

    /// Decodes `bytes`; the error names the format and says where it broke.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> std::result::Result<T, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
        match self {
            Format::Json => serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}")),
            Format::Toml => toml::from_str(text).map_err(|e| format!("invalid TOML: {}", e.to_string().trim_end())),
            Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}")),
        }
    }
}

/// The format of `key`: `explicit` if given, else the key's suffix.
/// Writers (`roster config set`, the console) share it.
pub fn format_for(key: &str, explicit: Option<Format>) -> std::result::Result<Format, String> {
    explicit.or_else(|| Format::from_key(key)).ok_or_else(|| {
        format!("cannot tell the format of {key:?}: end the key in .json, .toml, .yaml or .yml, or pass --format")
    })
}

/// The check a value passes before it is written (`roster config set`, the
/// console's editor): it must decode in its format, so that no watcher is
/// handed a value it would reject for its syntax.
pub fn check_value(format: Format, value: &[u8]) -> std::result::Result<(), String> {
    format
        .decode::<serde::de::IgnoredAny>(value)
        .map(|_| ())
        .map_err(|e| format!("not written: the value is not valid {format}: {e}"))
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Toml => "toml",
            Format::Yaml => "yaml",
        })
    }
}

/// Something that happened to a watched key.
#[derive(Debug)]
pub enum ConfigEvent<T> {
    /// A new good value is in effect.
    Updated { key: String, value: Arc<T>, revision: i64 },
    /// A new value was refused; the previous one stays in effect.
    Rejected { key: String, revision: i64, error: String },
    /// The key was deleted. A single watched key keeps its last value; a
    /// tree drops the entry.
    Deleted { key: String, revision: i64 },
}

impl<T> Clone for ConfigEvent<T> {
    fn clone(&self) -> Self {
        match self {
            ConfigEvent::Updated { key, value, revision } => {
                ConfigEvent::Updated { key: key.clone(), value: value.clone(), revision: *revision }
            }
            ConfigEvent::Rejected { key, revision, error } => {
                ConfigEvent::Rejected { key: key.clone(), revision: *revision, error: error.clone() }
            }
            ConfigEvent::Deleted { key, revision } => ConfigEvent::Deleted { key: key.clone(), revision: *revision },
        }
    }
}

type Validator<T> = Arc<dyn Fn(&T) -> std::result::Result<(), String> + Send + Sync>;

/// How to watch: format, validation and cache. `T` is the decoded type.
pub struct Options<T> {
    format: Option<Format>,
    validate: Option<Validator<T>>,
    cache_file: Option<PathBuf>,
}

impl<T> Default for Options<T> {
    fn default() -> Self {
        Options { format: None, validate: None, cache_file: None }
    }
}

/// Watches one key with default options.
pub async fn watch<T>(client: &Client, key: &str) -> Result<Config<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    Options::new().watch(client, key).await
}

impl<T> Options<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes every value as `format`, whatever the key's suffix.
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Rejects decoded values for which `check` returns an error.
    pub fn validate(mut self, check: impl Fn(&T) -> std::result::Result<(), String> + Send + Sync + 'static) -> Self {
        self.validate = Some(Arc::new(check));
        self
    }

    /// Keeps the last good value(s) in `path`, written atomically on every
    /// change, and starts from it when the registry cannot be reached.
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// Watches one key. Returns once a good value is known: from the
    /// registry, or from the cache file when the registry is unreachable,
    /// or when its value is missing or bad. Otherwise it fails, saying why.
    pub async fn watch(self, client: &Client, key: &str) -> Result<Config<T>> {
        if key.is_empty() {
            return Err(Error::Config("config key is empty".into()));
        }
        let (core, task) = self.start(client, mirror::Range::key(key), Mode::Key, key).await?;
        if core.entries.load().values.contains_key(key) {
            return Ok(Config { key: key.to_owned(), core, _task: task });
        }
        let why = match core.last_error.lock().clone() {
            Some(e) => e,
            None => format!("config key {key:?} is not set (write it with `roster config set {key} ...`)"),
        };
        Err(Error::Config(why))
    }

    /// Watches every key under `prefix` as one tree. Entries that do not
    /// decode or validate are left out (or keep their last good value).
    pub async fn watch_prefix(self, client: &Client, prefix: &str) -> Result<ConfigTree<T>> {
        if prefix.is_empty() {
            return Err(Error::Config("config prefix is empty".into()));
        }
        let (core, task) = self.start(client, mirror::Range::prefix(prefix), Mode::Prefix, prefix).await?;
        Ok(ConfigTree { prefix: prefix.to_owned(), core, _task: task })
    }

    /// The core, and the guard of the task that mirrors into it: handles
    /// share the guard, the task only the core.
    async fn start(
        self,
        client: &Client,
        range: mirror::Range,
        mode: Mode,
        label: &str,
    ) -> Result<(Arc<Core<T>>, Arc<DropGuard>)> {
        let core = Arc::new(Core {
            label: label.to_owned(),
            mode,
            format: self.format,
            validate: self.validate,
            cache_file: self.cache_file,
            entries: ArcSwap::from_pointee(Entries::default()),
            changes: broadcast::channel(1024).0,
            last_error: Mutex::new(None),
        });
        let cached = core.load_cache();
        let listed = match mirror::list(client, &range, &*core).await {
            Ok(rev) => Some(rev),
            Err(e) if cached => {
                tracing::warn!(config = label, error = %e, "registry unreachable; starting from the cache file");
                core.unreachable();
                None
            }
            Err(e) => return Err(e),
        };
        let task = mirror::spawn(client.clone(), range, core.clone(), listed);
        Ok((core, Arc::new(task)))
    }
}

/// One watched key. Cheap to clone; the watch stops with the last clone.
pub struct Config<T> {
    key: String,
    core: Arc<Core<T>>,
    _task: Arc<DropGuard>,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config { key: self.key.clone(), core: self.core.clone(), _task: self._task.clone() }
    }
}

impl<T: Send + Sync + 'static> Config<T> {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value in effect: a lock-free read.
    pub fn get(&self) -> Arc<T> {
        let entries = self.core.entries.load();
        entries.values.get(&self.key).expect("a Config always holds its key").value.clone()
    }

    /// The text of the value in effect, as it is stored.
    pub fn raw(&self) -> Arc<str> {
        let entries = self.core.entries.load();
        entries.values.get(&self.key).expect("a Config always holds its key").raw.clone()
    }

    /// The revision at which the value in effect was written.
    pub fn revision(&self) -> i64 {
        self.core.entries.load().values.get(&self.key).map_or(0, |e| e.mod_revision)
    }

    /// Changes from now on. An update is announced once it is in effect:
    /// [`get`](Self::get) on the event returns it (or a later value).
    pub fn changes(&self) -> impl Stream<Item = ConfigEvent<T>> + Send + 'static {
        self.core.subscribe()
    }

    /// True while the registry is unreachable and the value may be old.
    pub fn is_stale(&self) -> bool {
        self.core.entries.load().stale
    }

    /// Why the last new value was rejected, until a good one arrives.
    pub fn last_error(&self) -> Option<String> {
        self.core.last_error.lock().clone()
    }
}

/// Every key under a prefix, decoded. Cheap to clone.
pub struct ConfigTree<T> {
    prefix: String,
    core: Arc<Core<T>>,
    _task: Arc<DropGuard>,
}

impl<T> Clone for ConfigTree<T> {
    fn clone(&self) -> Self {
        ConfigTree { prefix: self.prefix.clone(), core: self.core.clone(), _task: self._task.clone() }
    }
}

impl<T: Send + Sync + 'static> ConfigTree<T> {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tree in effect, by key relative to the prefix: a lock-free read
    /// of an immutable map.
    pub fn get(&self) -> BTreeMap<String, Arc<T>> {
        let entries = self.core.entries.load();
        entries.values.iter().map(|(k, e)| (k[self.prefix.len()..].to_owned(), e.value.clone())).collect()
    }

    /// One entry, by key relative to the prefix.
    pub fn entry(&self, rel: &str) -> Option<Arc<T>> {
        let full = format!("{}{}", self.prefix, rel);
        self.core.entries.load().values.get(&full).map(|e| e.value.clone())
    }

    /// Changes from now on, announced once they are in effect.
    pub fn changes(&self) -> impl Stream<Item = ConfigEvent<T>> + Send + 'static {
        self.core.subscribe()
    }

    pub fn is_stale(&self) -> bool {
        self.core.entries.load().stale
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One key; a delete keeps the last value.
    Key,
    /// A tree; a delete drops the entry.
    Prefix,
}

struct Entry<T> {
    value: Arc<T>,
    /// The registry revision of this value; the revision of the cache file
    /// for a value read from it.
    mod_revision: i64,
    /// The raw bytes, for the cache file.
    raw: Arc<str>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry { value: self.value.clone(), mod_revision: self.mod_revision, raw: self.raw.clone() }
    }
}

struct Entries<T> {
    values: BTreeMap<String, Entry<T>>,
    /// The registry revision last seen.
    revision: i64,
    stale: bool,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries { values: BTreeMap::new(), revision: 0, stale: false }
    }
}

impl<T> Clone for Entries<T> {
    fn clone(&self) -> Self {
        Entries { values: self.values.clone(), revision: self.revision, stale: self.stale }
    }
}

/// What the cache file holds: the raw values, so they decode as they did.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheFile {
    /// The key or prefix watched, so a file meant for another is not used.
    watched: String,
    revision: i64,
    values: BTreeMap<String, String>,
}

/// The state shared by handles and the mirroring task.
struct Core<T> {
    label: String,
    mode: Mode,
    format: Option<Format>,
    validate: Option<Validator<T>>,
    cache_file: Option<PathBuf>,
    entries: ArcSwap<Entries<T>>,
    changes: broadcast::Sender<ConfigEvent<T>>,
    last_error: Mutex<Option<String>>,
}

impl<T: Send + Sync + 'static> Core<T> {
    fn subscribe(&self) -> impl Stream<Item = ConfigEvent<T>> + Send + 'static {
        BroadcastStream::new(self.changes.subscribe()).filter_map(|e| e.ok())
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Core<T> {
    fn decode(&self, key: &str, raw: &[u8]) -> std::result::Result<T, String> {
        let format = self.format.or_else(|| Format::from_key(key)).ok_or_else(|| {
            format!("cannot tell the format of {key:?}: end the key in .json, .toml, .yaml or .yml, or choose a format")
        })?;
        let value = format.decode::<T>(raw)?;
        if let Some(check) = &self.validate {
            check(&value).map_err(|e| format!("rejected by validation: {e}"))?;
        }
        Ok(value)
    }

    /// Reads the cache file into the entries; true if it gave any value.
    fn load_cache(&self) -> bool {
        let Some(path) = &self.cache_file else { return false };
        let file: CacheFile = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable config cache file");
                    return false;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the config cache file");
                return false;
            }
        };
        if file.watched != self.label {
            tracing::warn!(path = %path.display(), cached = %file.watched, watched = %self.label, "ignoring a config cache file written for another key");
            return false;
        }
        let mut entries = Entries { revision: file.revision, stale: true, ..Entries::default() };
        for (key, raw) in file.values {
            match self.decode(&key, raw.as_bytes()) {
                Ok(v) => {
                    entries
                        .values
                        .insert(key, Entry { value: Arc::new(v), mod_revision: file.revision, raw: raw.into() });
                }
                Err(e) => tracing::warn!(path = %path.display(), key, error = %e, "skipping a cached value"),
            }
        }
        let any = !entries.values.is_empty() || self.mode == Mode::Prefix;
        self.entries.store(Arc::new(entries));
        any
    }

    fn write_cache(&self, entries: &Entries<T>) {
        let Some(path) = &self.cache_file else { return };
        let file = CacheFile {
            watched: self.label.clone(),
            revision: entries.revision,
            values: entries.values.iter().map(|(k, e)| (k.clone(), e.raw.to_string())).collect(),
        };
        if let Err(e) = write_atomically(path, &serde_json::to_vec_pretty(&file).expect("plain data serializes")) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the config cache file");
        }
    }

    /// Takes a new value for `kv.key` if it is good. Returns whether the
    /// entries changed; what happened goes to `events`, sent once `next` is
    /// published.
    fn consider(&self, next: &mut Entries<T>, kv: &KeyValue, events: &mut Vec<ConfigEvent<T>>) -> bool {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if next.values.get(&key).is_some_and(|e| e.mod_revision >= kv.mod_revision) {
            return false; // seen already (a listing after a resync)
        }
        let decoded = self.decode(&key, &kv.value);
        let raw = std::str::from_utf8(&kv.value).map(Arc::<str>::from);
        match (decoded, raw) {
            (Ok(v), Ok(raw)) => {
                let value = Arc::new(v);
                next.values.insert(key.clone(), Entry { value: value.clone(), mod_revision: kv.mod_revision, raw });
                *self.last_error.lock() = None;
                events.push(ConfigEvent::Updated { key, value, revision: kv.mod_revision });
                true
            }
            (Err(error), _) => {
                self.reject(key, kv.mod_revision, error, events);
                false
            }
            (Ok(_), Err(e)) => {
                self.reject(key, kv.mod_revision, format!("not UTF-8 text: {e}"), events);
                false
            }
        }
    }

    fn reject(&self, key: String, revision: i64, error: String, events: &mut Vec<ConfigEvent<T>>) {
        tracing::warn!(key, revision, error = %error, "config value rejected; keeping the last good one");
        *self.last_error.lock() = Some(format!("config key {key:?} at revision {revision}: {error}"));
        events.push(ConfigEvent::Rejected { key, revision, error });
    }

    fn remove(&self, next: &mut Entries<T>, key: String, revision: i64, events: &mut Vec<ConfigEvent<T>>) -> bool {
        let had = next.values.contains_key(&key);
        if !had {
            return false;
        }
        events.push(ConfigEvent::Deleted { key: key.clone(), revision });
        match self.mode {
            Mode::Key => {
                tracing::warn!(key, revision, "config key deleted; keeping its last value");
                false
            }
            Mode::Prefix => {
                next.values.remove(&key);
                true
            }
        }
    }

    /// Makes `next` current, then tells subscribers: a subscriber that
    /// reads the value on an event must find the new one.
    fn publish(&self, next: Entries<T>, changed: bool, events: Vec<ConfigEvent<T>>) {
        if changed {
            self.write_cache(&next);
        }
        self.entries.store(Arc::new(next));
        for ev in events {
            let _ = self.changes.send(ev);
        }
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Mirror for Core<T> {
    fn label(&self) -> &str {
        &self.label
    }

    fn reset(&self, kvs: &[KeyValue], revision: i64) {
        let mut next = (**self.entries.load()).clone();
        let mut changed = false;
        let mut events = Vec::new();
        for kv in kvs {
            changed |= self.consider(&mut next, kv, &mut events);
        }
        let listed: std::collections::HashSet<&[u8]> = kvs.iter().map(|kv| &kv.key[..]).collect();
        let gone: Vec<String> = next.values.keys().filter(|k| !listed.contains(k.as_bytes())).cloned().collect();
        for key in gone {
            changed |= self.remove(&mut next, key, revision, &mut events);
        }
        next.revision = revision;
        next.stale = false;
        self.publish(next, changed, events);
    }

    fn apply(&self, events: &[Event], revision: i64) {
        let mut next = (**self.entries.load()).clone();
        let mut changed = false;
        let mut out = Vec::new();
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            if ev.r#type == EventType::Delete as i32 {
                changed |=
                    self.remove(&mut next, String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision, &mut out);
            } else {
                changed |= self.consider(&mut next, kv, &mut out);
            }
        }
        next.revision = revision.max(next.revision);
        next.stale = false;
        self.publish(next, changed, out);
    }

    fn unreachable(&self) {
        let cur = self.entries.load();
        if !cur.stale {
            self.entries.store(Arc::new(Entries { stale: true, ..(**cur).clone() }));
        }
    }
}

/// Writes `path` so that a reader sees the old file or the new one, whole.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct App {
        name: String,
        workers: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn format_comes_from_the_suffix() {
        assert_eq!(Format::from_key("/config/app.json"), Some(Format::Json));
        assert_eq!(Format::from_key("/config/app.TOML"), Some(Format::Toml));
        assert_eq!(Format::from_key("/config/app.yml"), Some(Format::Yaml));
        assert_eq!(Format::from_key("/config/app.yaml"), Some(Format::Yaml));
        assert_eq!(Format::from_key("/config/app"), None);
        assert_eq!(Format::from_key("/config.d/app"), None);
        assert_eq!(Format::parse("yml"), Some(Format::Yaml));
        assert_eq!(Format::parse("xml"), None);
    }

    #[test]
    fn each_format_decodes_the_same_value() {
        let want = App { name: "api".into(), workers: 4, tags: vec!["a".into(), "b".into()] };
        let json = br#"{"name": "api", "workers": 4, "tags": ["a", "b"]}"#;
        let toml = b"name = \"api\"\nworkers = 4\ntags = [\"a\", \"b\"]\n";
        let yaml = b"name: api\nworkers: 4\ntags:\n  - a\n  - b\n";
        assert_eq!(Format::Json.decode::<App>(json).unwrap(), want);
        assert_eq!(Format::Toml.decode::<App>(toml).unwrap(), want);
        assert_eq!(Format::Yaml.decode::<App>(yaml).unwrap(), want);
    }

    #[test]
    fn decode_errors_name_the_format_and_place() {
        let e = Format::Toml.decode::<App>(b"name = \"api\"\nworkers = \"many\"\n").unwrap_err();
        assert!(e.starts_with("invalid TOML:") && e.contains("workers"), "{e}");
        let e = Format::Json.decode::<App>(b"{\"name\": \"api\"").unwrap_err();
        assert!(e.starts_with("invalid JSON:") && e.contains("line 1"), "{e}");
        let e = Format::Yaml.decode::<App>(b"name: api\n").unwrap_err();
        assert!(e.starts_with("invalid YAML:") && e.contains("workers"), "{e}");
        let e = Format::Json.decode::<App>(&[0xff, 0xfe]).unwrap_err();
        assert!(e.starts_with("not UTF-8 text"), "{e}");
    }

    #[test]
    fn cache_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/app.cache");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.cache")], "no temporary file left behind");
    }
}
