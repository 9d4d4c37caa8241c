//! The Cloud PC's inbox: files devices drop on it (as a LocalSend peer, [`localsend`]), kept
//! encrypted at rest until the owner takes them.
//!
//! A file is written as it arrives, encrypted with age, to `ID.part`, and becomes `ID.age`
//! (with its description in `ID.json`) only once every byte came: the inbox never holds a
//! partial file as complete. The recipients are the owner's query-log keys when the owner set
//! them (then only the owner's devices can read the files), else a key the hub keeps in
//! `drop/key.txt` of the state dir. A quota bounds the inbox and old files expire.

pub mod forward;
pub mod localsend;
pub mod resume;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use age::x25519;

/// `[drop]` of the config.
#[derive(Debug, Clone, Copy)]
pub struct DropSettings {
    /// The inbox holds at most this many bytes (of plaintext).
    pub max_bytes: u64,
    /// Files older than this are removed.
    pub keep_secs: i64,
}

impl Default for DropSettings {
    fn default() -> Self {
        DropSettings {
            max_bytes: 2 << 30,
            keep_secs: 7 * 86_400,
        }
    }
}

/// One file in the inbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropItem {
    pub id: String,
    /// The file name as sent, made safe (no directories, no control characters).
    pub name: String,
    pub size: u64,
    /// Who sent it (the device's name on the network).
    pub from: String,
    /// Unix seconds.
    pub received_at: i64,
    /// Encrypted to the owner's keys (else to the hub's own).
    pub owner_keys: bool,
}

/// Why a file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("the inbox is full ({used} of {max} bytes); take or remove files first")]
    Full { used: u64, max: u64 },
    #[error("the file is larger than announced")]
    TooLong,
    #[error("the file ended before its announced size")]
    TooShort,
    #[error("inbox: {0}")]
    Io(#[from] std::io::Error),
    #[error("inbox encryption: {0}")]
    Crypt(String),
}

/// The inbox in a state dir.
pub struct Inbox {
    dir: PathBuf,
    key: x25519::Identity,
    settings: DropSettings,
    /// Bytes promised to the files arriving now (their whole announced size).
    reserved: Arc<AtomicU64>,
    /// Held while a file is let in (the check and the promise are one step).
    gate: parking_lot::Mutex<()>,
}

/// A file's place in the quota while it arrives; given back when it is done or dropped.
struct Reservation {
    pool: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A safe file name: the last path component, no control characters, no leading dots.
pub fn sanitize(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .chars()
        .take(200)
        .collect();
    if clean.is_empty() {
        "file".to_string()
    } else {
        clean
    }
}

fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Inbox {
    /// The inbox under `state_dir/drop` (made 0700, with the hub's key on first use).
    pub fn open(state_dir: &Path, settings: DropSettings) -> std::io::Result<Inbox> {
        let dir = state_dir.join("drop");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let key_path = dir.join("key.txt");
        let key = match std::fs::read_to_string(&key_path) {
            Ok(t) => t
                .trim()
                .parse::<x25519::Identity>()
                .map_err(|e| std::io::Error::other(format!("{}: {e}", key_path.display())))?,
            Err(_) => {
                use age::secrecy::ExposeSecret;
                let k = x25519::Identity::generate();
                crate::enroll::qr::write_private_file(
                    &key_path,
                    k.to_string().expose_secret().as_bytes(),
                )?;
                k
            }
        };
        Ok(Inbox {
            dir,
            key,
            settings,
            reserved: Arc::default(),
            gate: parking_lot::Mutex::new(()),
        })
    }

    /// The hub's own key (the recipient when the owner set no keys).
    pub fn hub_recipient(&self) -> x25519::Recipient {
        self.key.to_public()
    }

    /// The hub's own identity (reads files encrypted to it).
    pub fn hub_identity(&self) -> &x25519::Identity {
        &self.key
    }

    /// Every complete file, oldest first.
    pub fn list(&self) -> Vec<DropItem> {
        let mut out: Vec<DropItem> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                if p.extension()? != "json" {
                    return None;
                }
                let item: DropItem = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                self.path(&item.id, "age").exists().then_some(item)
            })
            .collect();
        out.sort_by_key(|i| (i.received_at, i.id.clone()));
        out
    }

    /// Bytes held: complete files, and the whole size of the ones arriving.
    pub fn used(&self) -> u64 {
        let done: u64 = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "age"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        done + self.reserved.load(Ordering::Relaxed)
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    /// Starts taking a file of `size` bytes from `from`, encrypted to `recipients` (empty: the
    /// hub's key).
    pub fn begin(
        &self,
        name: &str,
        size: u64,
        from: &str,
        recipients: &[x25519::Recipient],
    ) -> Result<Incoming, DropError> {
        self.expire(crate::store::unix_now());
        let _gate = self.gate.lock();
        let used = self.used();
        if used.saturating_add(size) > self.settings.max_bytes {
            return Err(DropError::Full {
                used,
                max: self.settings.max_bytes,
            });
        }
        // Promised now, so that files arriving side by side cannot pass the quota together.
        self.reserved.fetch_add(size, Ordering::Relaxed);
        let reservation = Reservation {
            pool: self.reserved.clone(),
            bytes: size,
        };
        let id = crate::certs::hex(&rand::random::<[u8; 8]>());
        let owner_keys = !recipients.is_empty();
        let hub = [self.hub_recipient()];
        let to: &[x25519::Recipient] = if owner_keys { recipients } else { &hub };
        let enc = age::Encryptor::with_recipients(to.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| DropError::Crypt(e.to_string()))?;
        let part = self.path(&id, "part");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)?;
        let writer = enc
            .wrap_output(std::io::BufWriter::new(file))
            .map_err(|e| DropError::Crypt(e.to_string()))?;
        Ok(Incoming {
            item: DropItem {
                id: id.clone(),
                name: sanitize(name),
                size,
                from: from.to_string(),
                received_at: crate::store::unix_now(),
                owner_keys,
            },
            part,
            done: self.path(&id, "age"),
            meta: self.path(&id, "json"),
            writer: Some(writer),
            written: 0,
            _reservation: reservation,
        })
    }

    /// Removes a file; false when there is none with that id.
    pub fn remove(&self, id: &str) -> bool {
        if !valid_id(id) {
            return false;
        }
        let had = std::fs::remove_file(self.path(id, "age")).is_ok();
        let _ = std::fs::remove_file(self.path(id, "json"));
        had
    }

    /// The plaintext of a file, decrypted with `identity` (the owner's key) or the hub's.
    pub fn open_plain(
        &self,
        id: &str,
        identity: Option<&dyn age::Identity>,
    ) -> Result<Box<dyn Read + Send>, String> {
        if !valid_id(id) {
            return Err(format!(
                "{id:?} is not a file id; `cloudpc drop list` shows them"
            ));
        }
        let f = std::fs::File::open(self.path(id, "age"))
            .map_err(|_| format!("no file {id} in the inbox; `cloudpc drop list` shows them"))?;
        let d = age::Decryptor::new(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
        let id: &dyn age::Identity = identity.unwrap_or(&self.key);
        let r = d.decrypt(std::iter::once(id)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                "this file is encrypted to the owner's keys: give one with --identity".to_string()
            }
            e => e.to_string(),
        })?;
        Ok(Box::new(r))
    }

    /// The files waiting to be forwarded: (file id, device name), oldest first.
    pub fn outbox(&self) -> Vec<(String, String)> {
        std::fs::read(self.dir.join("outbox.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces the list of files waiting to be forwarded.
    pub fn set_outbox(&self, items: &[(String, String)]) -> std::io::Result<()> {
        let tmp = self.dir.join("outbox.json.tmp");
        crate::enroll::qr::write_private_file(
            &tmp,
            &serde_json::to_vec(items).unwrap_or_default(),
        )?;
        std::fs::rename(tmp, self.dir.join("outbox.json"))
    }

    /// Takes a file from outside into the inbox (encrypted to the hub's key), e.g. one the
    /// owner sends from the hub with `cloudpc drop send FILE`.
    pub fn add_file(&self, path: &Path, from: &str) -> Result<DropItem, DropError> {
        let mut f = std::fs::File::open(path)?;
        let size = f.metadata()?.len();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let mut i = self.begin(name, size, from, &[])?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            i.write(&buf[..n])?;
        }
        i.finish()
    }

    /// Removes files older than `drop.keep` and partial ones left by a stop.
    pub fn expire(&self, now: i64) {
        for item in self.list() {
            if now - item.received_at > self.settings.keep_secs {
                self.remove(&item.id);
            }
        }
    }
}

/// A file arriving: bytes are encrypted as they come; only [`Incoming::finish`] makes it a
/// complete file of the inbox (dropped unfinished, it leaves nothing).
pub struct Incoming {
    pub item: DropItem,
    part: PathBuf,
    done: PathBuf,
    meta: PathBuf,
    writer: Option<age::stream::StreamWriter<std::io::BufWriter<std::fs::File>>>,
    written: u64,
    _reservation: Reservation,
}

impl Incoming {
    /// Takes the next bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), DropError> {
        if self.written + data.len() as u64 > self.item.size {
            return Err(DropError::TooLong);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write_all(data)?;
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Completes the file: every announced byte came, it is on disk, and it is listed.
    pub fn finish(mut self) -> Result<DropItem, DropError> {
        if self.written != self.item.size {
            return Err(DropError::TooShort);
        }
        let w = self.writer.take().expect("written once");
        let buf = w.finish()?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.part, &self.done)?;
        crate::enroll::qr::write_private_file(
            &self.meta,
            &serde_json::to_vec(&self.item).unwrap_or_default(),
        )?;
        Ok(self.item.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_listed_only_once_complete_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path(), DropSettings::default()).unwrap();
        let data = b"secret plaintext marker ".repeat(1000);
        let mut i = inbox
            .begin("../../etc/passwd", data.len() as u64, "laptop", &[])
            .unwrap();
        assert_eq!(i.item.name, "passwd");
        i.write(&data[..100]).unwrap();
        assert!(inbox.list().is_empty(), "a partial file is not listed");
        i.write(&data[100..]).unwrap();
        assert!(i.write(b"x").is_err(), "more than announced");
        let item = i.finish().unwrap();
        assert_eq!(inbox.list(), vec![item.clone()]);
        let mut back = Vec::new();
        inbox
            .open_plain(&item.id, None)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        for e in std::fs::read_dir(dir.path().join("drop")).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(15).any(|w| w == b"plaintext marke"));
        }
        // A transfer cut short leaves nothing.
        let mut cut = inbox.begin("x.bin", 10, "laptop", &[]).unwrap();
        cut.write(b"12345").unwrap();
        assert!(matches!(cut.finish(), Err(DropError::TooShort)));
        assert_eq!(inbox.list().len(), 1);
        assert!(inbox.remove(&item.id));
        assert!(inbox.list().is_empty());
        assert_eq!(inbox.used(), 0);
    }

    #[test]
    fn the_quota_refuses_what_does_not_fit_and_owner_keys_lock_the_hub_out() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(
            dir.path(),
            DropSettings {
                max_bytes: 100,
                keep_secs: 60,
            },
        )
        .unwrap();
        assert!(matches!(
            inbox.begin("big", 101, "laptop", &[]),
            Err(DropError::Full { .. })
        ));
        // Files arriving side by side share the quota from their first byte.
        let first = inbox.begin("a", 60, "laptop", &[]).unwrap();
        assert!(matches!(
            inbox.begin("b", 60, "laptop", &[]),
            Err(DropError::Full { .. })
        ));
        drop(first);
        assert_eq!(
            inbox.used(),
            0,
            "a file dropped unfinished gives its place back"
        );
        let owner = x25519::Identity::generate();
        let mut i = inbox.begin("a", 3, "laptop", &[owner.to_public()]).unwrap();
        i.write(b"abc").unwrap();
        let item = i.finish().unwrap();
        assert!(item.owner_keys);
        assert!(inbox.open_plain(&item.id, None).is_err());
        let mut back = Vec::new();
        inbox
            .open_plain(&item.id, Some(&owner))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"abc");
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("C:\\Users\\me\\photo.jpg"), "photo.jpg");
        assert_eq!(sanitize(".hidden"), "hidden");
        assert_eq!(sanitize("a\u{0}b\nc"), "abc");
        assert_eq!(sanitize(".."), "file");
        assert_eq!(sanitize(""), "file");
    }
}
