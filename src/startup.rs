//! Process setup that is not configuration parsing: logging and the admin key.

use std::io::Write;
use std::path::Path;

use switchboard_actors::registry::Registry;

use crate::config::Config;

/// File in the data dir that holds a generated admin key (mode 0600).
pub const ADMIN_KEY_FILE: &str = "admin_key";

/// `RUST_LOG` (default `info`), as text or JSON lines.
pub fn init_logging(format: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == "json" {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": switchboard_actors::record::now_ms(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
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
    // Printed once, on the run that generated it; never logged.
    println!(
        "switchboard admin key (generated, shown once; also in {}): {key}",
        config.data_dir.join(ADMIN_KEY_FILE).display()
    );
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
