//! Where sealed lines go: an append-only file (with size-based rotation and chain recovery on
//! startup) or a stream (stdout, a pipe, a character device).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{is_hash, GENESIS_PREV};

/// How far back from the end of a log startup looks for the last complete record. Records are
/// a few hundred bytes (client strings are bounded), so a window this size without a single
/// complete record means the file is not an audit log we wrote.
const TAIL_WINDOW: u64 = 4 << 20;

/// Where the chain continues after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The `hash` of the last complete record (or [`GENESIS_PREV`]).
    pub last_hash: String,
    /// The active file ends without a newline: a record torn by a crash. It is kept as evidence
    /// (verify reports it) and the next record starts on a new line.
    pub torn_tail: bool,
}

/// Startup found a log whose chain cannot be continued; retrying will not help.
#[derive(Debug, Clone)]
pub(crate) struct Unrecoverable(pub String);

pub(crate) enum RecoverError {
    Io(io::Error),
    Fatal(Unrecoverable),
}

impl From<io::Error> for RecoverError {
    fn from(e: io::Error) -> Self {
        RecoverError::Io(e)
    }
}

/// The open destination of the log.
pub(crate) enum Sink {
    Stdout,
    File(FileSink),
}

pub(crate) struct FileSink {
    path: PathBuf,
    /// `None` until opened, and again after a write error (the next attempt reopens).
    file: Option<File>,
    /// A regular file: rotation and fsync apply. A pipe or device is written as a stream.
    regular: bool,
    /// Bytes in the active file, for rotation.
    len: u64,
    /// Held for the writer's lifetime: two writers on one log would fork its chain.
    lock: Option<File>,
    /// The number the next rotated file gets.
    next_rotation: u64,
    /// Whether the active file needs a newline before the next record (torn tail).
    needs_newline: bool,
}

impl Sink {
    pub(crate) fn new(path: &str) -> Sink {
        if path == "-" {
            Sink::Stdout
        } else {
            Sink::File(FileSink {
                path: PathBuf::from(path),
                file: None,
                regular: true,
                len: 0,
                lock: None,
                next_rotation: 1,
                needs_newline: false,
            })
        }
    }

    /// Locks the log, finds where its chain ends and opens it for appending. Called once before
    /// the first write and again until it succeeds.
    pub(crate) fn recover(&mut self) -> Result<Recovered, RecoverError> {
        match self {
            Sink::Stdout => Ok(Recovered {
                last_hash: GENESIS_PREV.to_string(),
                torn_tail: false,
            }),
            Sink::File(f) => f.recover(),
        }
    }

    /// Whether the sink is open and ready for [`Sink::write`].
    pub(crate) fn is_open(&self) -> bool {
        match self {
            Sink::Stdout => true,
            Sink::File(f) => f.file.is_some(),
        }
    }

    /// Reopens the active file after an error (the chain state is the writer's, in memory).
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => Ok(()),
            Sink::File(f) => f.open_active(),
        }
    }

    /// Drops the open file so that the next attempt reopens it.
    pub(crate) fn close(&mut self) {
        if let Sink::File(f) = self {
            f.file = None;
        }
    }

    /// How many more bytes the active file takes before it must rotate (`None`: no limit).
    pub(crate) fn room(&self, max_file_bytes: Option<u64>) -> Option<u64> {
        match self {
            Sink::File(f) if f.regular => max_file_bytes.map(|m| m.saturating_sub(f.len)),
            _ => None,
        }
    }

    /// Whether the active file holds no bytes (an oversized record then goes in alone).
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Sink::File(f) => f.len == 0,
            Sink::Stdout => true,
        }
    }

    /// Writes some of `buf` (like [`Write::write`]), the newline for a torn tail first.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                let n = out.write(buf)?;
                out.flush()?;
                Ok(n)
            }
            Sink::File(f) => f.write(buf),
        }
    }

    /// Makes everything written so far durable (`fdatasync`); a no-op for streams, which have
    /// nothing to sync.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::File(f) => match (&f.file, f.regular) {
                (Some(file), true) => file.sync_data(),
                (Some(_), false) => Ok(()),
                (None, _) => Err(io::Error::other("the audit log is not open")),
            },
        }
    }

    /// Closes the active file and starts a new one: the old one is synced, renamed to
    /// `<path>.<NNNNNN>` (numbered from 1 upward, never reused, so names sort in chain order),
    /// and the directory synced so that both names survive a power loss.
    pub(crate) fn rotate(&mut self) -> io::Result<()> {
        let Sink::File(f) = self else {
            return Ok(());
        };
        if let Some(file) = &f.file {
            file.sync_data()?;
        }
        let target = loop {
            let candidate = rotated_name(&f.path, f.next_rotation);
            if !candidate.exists() {
                break candidate;
            }
            f.next_rotation += 1;
        };
        fs::rename(&f.path, &target)?;
        f.next_rotation += 1;
        f.file = None;
        f.len = 0;
        f.needs_newline = false;
        f.open_active()?;
        sync_dir(&f.path)
    }
}

impl FileSink {
    fn recover(&mut self) -> Result<Recovered, RecoverError> {
        if let Some(dir) = parent(&self.path) {
            fs::create_dir_all(dir)?;
        }
        self.take_lock()?;
        let meta = match fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        // A pipe or device is a stream: nothing to read back, so its chain starts afresh.
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            self.regular = false;
            self.open_active()?;
            return Ok(Recovered {
                last_hash: GENESIS_PREV.to_string(),
                torn_tail: false,
            });
        }
        let newest_rotated = self.scan_rotated()?;
        let mut torn_tail = false;
        let mut last_hash = None;
        if meta.is_some() {
            let tail = scan_tail(&self.path)?;
            torn_tail = tail.torn_tail;
            last_hash = tail.last_hash;
        }
        // An active file without a complete record (created just before a crash, or right
        // after a rotation) continues the chain of the newest rotated file.
        if last_hash.is_none() {
            if let Some(rotated) = &newest_rotated {
                last_hash = scan_tail(rotated)?.last_hash;
                if last_hash.is_none() {
                    return Err(RecoverError::Fatal(Unrecoverable(format!(
                        "{} holds no complete audit record to continue the hash chain from",
                        rotated.display()
                    ))));
                }
            }
        }
        self.needs_newline = torn_tail;
        self.open_active()?;
        Ok(Recovered {
            last_hash: last_hash.unwrap_or_else(|| GENESIS_PREV.to_string()),
            torn_tail,
        })
    }

    fn take_lock(&mut self) -> io::Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let lock_path = lock_name(&self.path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(())
            }
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another process holds {}: it is writing this audit log (two writers would \
                     fork its hash chain)",
                    lock_path.display()
                ),
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Finds the highest rotation number in use; returns the newest rotated file.
    fn scan_rotated(&mut self) -> io::Result<Option<PathBuf>> {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        let prefix = format!("{name}.");
        let dir = parent(&self.path).unwrap_or(Path::new("."));
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(n) = file_name
                .to_str()
                .and_then(|s| s.strip_prefix(&prefix))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(m, _)| n > *m) {
                newest = Some((n, entry.path()));
            }
        }
        self.next_rotation = newest.as_ref().map_or(1, |(n, _)| n + 1);
        Ok(newest.map(|(_, p)| p))
    }

    fn open_active(&mut self) -> io::Result<()> {
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        self.regular = meta.is_file();
        self.len = if self.regular { meta.len() } else { 0 };
        self.file = Some(file);
        if !existed && self.regular {
            sync_dir(&self.path)?;
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("the audit log is not open"))?;
        if self.needs_newline {
            file.write_all(b"\n")?;
            self.needs_newline = false;
            self.len += 1;
        }
        let n = file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
}

/// What the end of a log holds.
struct Tail {
    last_hash: Option<String>,
    torn_tail: bool,
}

/// Reads the last [`TAIL_WINDOW`] bytes of `path` and finds the last complete line that is a
/// chained record. Lines after it that are not records (a torn record followed by the newline
/// a restart added) are skipped, as verify skips them.
fn scan_tail(path: &Path) -> Result<Tail, RecoverError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail {
            last_hash: None,
            torn_tail: false,
        });
    }
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.take(len - start).read_to_end(&mut buf)?;
    let torn_tail = buf.last() != Some(&b'\n');
    // Everything after the last newline is a torn line (or nothing).
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None => &buf[..0],
    };
    let mut lines: Vec<&[u8]> = complete.split(|&b| b == b'\n').collect();
    if start > 0 && !lines.is_empty() {
        // The window starts mid-line.
        lines.remove(0);
    }
    let last_hash = lines.iter().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let h = v.get("hash")?.as_str()?;
        is_hash(h).then(|| h.to_string())
    });
    if last_hash.is_none() && start > 0 {
        return Err(RecoverError::Fatal(Unrecoverable(format!(
            "the last {} MiB of {} hold no complete audit record, so its hash chain cannot be \
             continued; move the file away (and keep it) to start a new log",
            TAIL_WINDOW >> 20,
            path.display()
        ))));
    }
    Ok(Tail {
        last_hash,
        torn_tail,
    })
}

/// `<path>.<n>`, zero-padded to 6 digits so that a shell glob lists rotated files in order.
pub(crate) fn rotated_name(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n:06}"));
    PathBuf::from(s)
}

/// `<dir>/.<name>.lock`: hidden, so that `audit.jsonl.*` matches rotated files only.
fn lock_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let file = format!(".{name}.lock");
    match parent(path) {
        Some(dir) => dir.join(file),
        None => PathBuf::from(file),
    }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Makes a new or renamed directory entry durable. Filesystems that cannot sync a directory say
/// so with `EINVAL`; there is nothing more to do on those.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = parent(path).unwrap_or(Path::new("."));
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}
