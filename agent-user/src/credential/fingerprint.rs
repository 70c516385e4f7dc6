//! The per-fleet fingerprint key.
//!
//! Fingerprints are keyed so that a leaked event stream cannot be used to confirm a
//! guessed secret, while hosts sharing the key still produce the same fingerprint for
//! the same secret (which is what lets the collector follow a credential across hosts).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY_LEN: usize = 32;

pub struct FleetKey([u8; KEY_LEN]);

impl FleetKey {
    /// Loads the key file (32 raw bytes, or 64 hex characters with an optional trailing
    /// newline). A missing file is created with 32 bytes from /dev/urandom, mode 0600.
    /// A file readable or writable by anyone but its owner is refused: a key others
    /// can read makes every fingerprint guessable.
    pub fn load_or_create(path: &Path) -> anyhow::Result<FleetKey> {
        match fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(e).with_context(|| format!("fleet key {}: cannot stat", path.display())),
        }
    }

    pub fn from_bytes(b: [u8; KEY_LEN]) -> FleetKey {
        FleetKey(b)
    }

    /// `hmac-sha256:` followed by the first 16 bytes of HMAC-SHA256(key, secret) in
    /// lowercase hex. 128 bits is plenty for collision-free correlation and keeps
    /// events short.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        format!("hmac-sha256:{}", hex::encode(&digest[..16]))
    }

    /// A non-secret identifier of the key itself, so operators can tell whether two
    /// hosts share a key without comparing the keys.
    pub fn key_id(&self) -> String {
        let fp = self.fingerprint(b"custody fleet key id");
        fp["hmac-sha256:".len().."hmac-sha256:".len() + 16].to_string()
    }

    fn load(path: &Path) -> anyhow::Result<FleetKey> {
        let mut file = fs::File::open(path)
            .with_context(|| format!("fleet key {}: cannot open", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("fleet key {}: cannot stat", path.display()))?;
        if !meta.is_file() {
            bail!("fleet key {}: not a regular file", path.display());
        }
        let mode = meta.mode() & 0o7777;
        if mode & !0o600 != 0 {
            bail!(
                "fleet key {}: permissions {:04o} are too open (must be 0600 or stricter)",
                path.display(),
                mode
            );
        }
        // Bounded read: a huge file here is a mistake, not a key.
        let mut buf = Vec::with_capacity(80);
        Read::by_ref(&mut file)
            .take(1024)
            .read_to_end(&mut buf)
            .with_context(|| format!("fleet key {}: cannot read", path.display()))?;
        let key = parse_key(&buf).with_context(|| format!("fleet key {}", path.display()));
        zero(&mut buf);
        key
    }

    fn create(path: &Path) -> anyhow::Result<FleetKey> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| {
                    format!(
                        "fleet key {}: cannot create directory {}",
                        path.display(),
                        parent.display()
                    )
                })?;
        }
        let mut bytes = [0u8; KEY_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .with_context(|| format!("fleet key {}: cannot read /dev/urandom", path.display()))?;

        // create_new so that two daemons starting at once cannot both write a key: the
        // loser reads the winner's key instead of silently using a different one.
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("fleet key {}: cannot create", path.display()));
            }
        };
        // The umask may have stripped bits but never adds any; set exactly 0600 anyway
        // in case the file system ignores the create mode.
        let written = file
            .set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|_| file.write_all(&bytes))
            .and_then(|_| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(path);
            return Err(e).with_context(|| format!("fleet key {}: cannot write", path.display()));
        }
        Ok(FleetKey(bytes))
    }
}

fn parse_key(buf: &[u8]) -> anyhow::Result<FleetKey> {
    if buf.len() == KEY_LEN {
        let mut b = [0u8; KEY_LEN];
        b.copy_from_slice(buf);
        return Ok(FleetKey(b));
    }
    let text = buf
        .strip_suffix(b"\r\n")
        .or_else(|| buf.strip_suffix(b"\n"))
        .unwrap_or(buf);
    if text.len() == 2 * KEY_LEN {
        let mut b = [0u8; KEY_LEN];
        return match hex::decode_to_slice(text, &mut b) {
            Ok(()) => Ok(FleetKey(b)),
            Err(_) => bail!("64 characters but not valid hex"),
        };
    }
    bail!(
        "wrong length: {} bytes (expected 32 raw bytes or 64 hex characters)",
        buf.len()
    )
}

fn zero(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // Volatile so the compiler cannot elide the wipe of memory about to be freed.
        // SAFETY: `b` is a valid, aligned, exclusive reference to an initialised u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

impl Clone for FleetKey {
    fn clone(&self) -> Self {
        FleetKey(self.0)
    }
}

impl Drop for FleetKey {
    fn drop(&mut self) {
        zero(&mut self.0);
    }
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}
