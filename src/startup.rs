//! Process setup that is not configuration parsing: logging and the admin key.

use std::io::Write;
use std::path::Path;

use switchboard_actors::registry::Registry;

use crate::config::Config;

/// File in the data dir that holds a generated admin key (mode 0600).
pub const ADMIN_KEY_FILE: &str = "admin_key";

/// The ids a log line is about (SPEC §4.3); with JSON logs each is a field of its own.
const ID_FIELDS: [&str; 3] = ["request_id", "session_id", "connection_id"];

/// `RUST_LOG` (default `info`), as text or JSON lines (SPEC §8). A JSON line is one object:
/// `time` (RFC 3339, UTC), `level`, `target`, `message`, the record's key-values, and
/// `request_id` / `session_id` / `connection_id` as fields of their own: from key-values, or
/// else from the `name=value` words the text carries (the convention of every log line here).
pub fn init_logging(format: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == "json" {
        builder.format(|buf, record| {
            let mut line = serde_json::Map::new();
            line.insert("time".into(), buf.timestamp_millis().to_string().into());
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            let message = record.args().to_string();
            let mut fields = KeyValues(serde_json::Map::new());
            let _ = record.key_values().visit(&mut fields);
            for (k, v) in fields.0 {
                line.entry(k).or_insert(v);
            }
            for (k, v) in ids_in_text(&message) {
                line.entry(k).or_insert(v.into());
            }
            line.insert("message".into(), message.into());
            writeln!(buf, "{}", serde_json::Value::Object(line))
        });
    }
    builder.init();
}

/// Collects a record's key-values as JSON.
struct KeyValues(serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for KeyValues {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let value = match value.to_u64() {
            Some(n) => n.into(),
            None => value.to_string().into(),
        };
        self.0.insert(key.as_str().to_string(), value);
        Ok(())
    }
}

/// `request_id=…`, `session_id=…`, `connection_id=…` words of a log text.
fn ids_in_text(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, v)| ID_FIELDS.contains(k) && !v.is_empty() && *v != "-")
        .map(|(k, v)| {
            let v = v.trim_end_matches([',', ';', ':', ')']);
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A line for people on stdout (the listening address, the admin-key banner): plain text, or
/// with JSON logs one JSON object like every log line, so every line the process writes parses.
/// One of the two places allowed to print (the crate denies `print_stdout` elsewhere).
#[allow(clippy::print_stdout)]
pub fn announce(json: bool, message: &str) {
    if json {
        let line = serde_json::json!({
            "time": now_rfc3339(),
            "level": "INFO",
            "target": "switchboard",
            "message": message,
        });
        println!("{line}");
    } else {
        println!("{message}");
    }
}

/// A fatal startup error on stderr, in the log format (`eprintln!` would break JSON logs).
/// The other place allowed to print: the process is about to exit.
#[allow(clippy::print_stderr)]
pub fn fatal(json: bool, message: &str) {
    if json {
        let line = serde_json::json!({
            "time": now_rfc3339(),
            "level": "ERROR",
            "target": "switchboard",
            "message": format!("switchboard: {message}"),
        });
        eprintln!("{line}");
    } else {
        eprintln!("switchboard: {message}");
    }
}

fn now_rfc3339() -> String {
    let ms = switchboard_actors::record::now_ms();
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

/// The admin key: from configuration, else the stored one, else a new one that is stored
/// (sled and a 0600 file) and printed once.
pub fn admin_key(config: &Config, registry: &Registry) -> Result<String, String> {
    if let Some(k) = config
        .admin_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        return Ok(k.to_string());
    }
    if let Some(k) = registry.admin_key().map_err(|e| e.to_string())? {
        log::info!(
            "admin key: the generated one stored in {}",
            config.data_dir.join(ADMIN_KEY_FILE).display()
        );
        return Ok(k);
    }
    let key = format!(
        "sb-admin-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&config.data_dir.join(ADMIN_KEY_FILE), &key)
        .map_err(|e| format!("SWITCHBOARD_DATA_DIR: cannot write the admin key file: {e}"))?;
    registry.set_admin_key(&key).map_err(|e| e.to_string())?;
    let path = config.data_dir.join(ADMIN_KEY_FILE);
    let json = config.log_format == "json";
    if config.is_local() {
        // Printed once, on the run that generated it; never logged.
        announce(
            json,
            &format!(
                "switchboard admin key (generated, shown once; also in {}): {key}",
                path.display()
            ),
        );
    } else {
        // Public mode: platform logs are kept for weeks and read by more people than the
        // admin, so the key itself stays in the 0600 file.
        announce(
            json,
            &format!(
                "switchboard admin key generated and stored in {} (mode 0600); not printed in \
                 public mode: read it from that file, or set SWITCHBOARD_ADMIN_KEY",
                path.display()
            ),
        );
    }
    Ok(key)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Mode of the data dir (and of every directory in it): it holds the admin key and backend keys.
#[cfg(unix)]
const PRIVATE_DIR: u32 = 0o700;
/// Mode of every file in the data dir.
#[cfg(unix)]
const PRIVATE_FILE: u32 = 0o600;

/// Makes the data dir private and proves it writable before sled opens it (SPEC §8): the
/// process umask becomes 077 (so sled's files are created 0600 in 0700 dirs), the dir is
/// created 0700 or an existing one (and what it holds) is brought to 0700/0600, and a file is
/// written and removed. A dir this process cannot write is refused with the path, the uid it
/// runs as and the fix, instead of sled's bare "Permission denied".
pub fn prepare_data_dir(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // SAFETY: umask(2) only sets the process file-mode mask; it cannot fail.
        unsafe {
            libc::umask(0o077);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .map_err(|e| not_writable(dir, "cannot create it", &e))?;
        tighten(dir);
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| not_writable(dir, "cannot create it", &e))?;
    let probe = dir.join(".switchboard-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| not_writable(dir, "cannot write there", &e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Brings `dir` and everything under it to 0700 (dirs) / 0600 (files); what this process
/// does not own is left alone with a warning (the write probe decides whether it can start).
#[cfg(unix)]
fn tighten(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let want = if meta.is_dir() {
            PRIVATE_DIR
        } else if meta.is_file() {
            PRIVATE_FILE
        } else {
            continue; // symlinks and the like are not followed
        };
        if meta.permissions().mode() & 0o7777 != want {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want)) {
                log::warn!(
                    "SWITCHBOARD_DATA_DIR: cannot set mode {want:o} on {}: {e}",
                    path.display()
                );
            }
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
    }
}

/// The refusal for a data dir this process cannot use: path, uid, and the fix.
pub fn not_writable(dir: &Path, what: &str, err: &std::io::Error) -> String {
    #[cfg(unix)]
    // SAFETY: getuid(2)/getgid(2) always succeed and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    #[cfg(not(unix))]
    let (uid, gid) = ("?", "?");
    let path = dir.display();
    format!(
        "SWITCHBOARD_DATA_DIR {path}: {what} ({err}); the broker runs as uid {uid} (gid {gid}). \
         Fix: make the directory writable for that uid, e.g. `chown -R {uid}:{gid} {path}` \
         (or mount the volume writable for uid {uid}), or point SWITCHBOARD_DATA_DIR at a \
         writable directory"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lifted_out_of_the_log_text() {
        let ids =
            ids_in_text("connection_id=7 session_id=abc ip=127.0.0.1 request_id=r1, refused: busy");
        let want = [
            ("connection_id", "7"),
            ("session_id", "abc"),
            ("request_id", "r1"),
        ];
        assert_eq!(
            ids,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        // A placeholder or a look-alike is not an id.
        assert!(ids_in_text("connection_id=3 session_id=- closed").len() == 1);
        assert!(ids_in_text("my_session_id=x").is_empty());
    }
}
