//! Reading one container's log files in order, as `layout::list` gives
//! them (runs by restart count, rotated files by stamp, then the current
//! file), never a line twice, never skipping one.
//!
//! The file being read stays open: a rotation renames it (same inode), a
//! compression or the writer's removal of the oldest file unlinks it, the
//! retention removes the whole directory — the shipper reads on through
//! its descriptor to the end. A file is finished once a newer one exists
//! and a read after seeing it finds nothing more (the writer rotates
//! before it writes to the new file). After a restart, the checkpointed
//! file is found again by device, inode and first bytes, or by first bytes
//! alone in its compressed copy.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::GzDecoder;
use tracing::warn;

use super::checkpoint::{HEAD_LEN, Position, head_hash};
use super::format::Labels;
use super::record::{self, Record};
use crate::logs::layout::{self, LogFile};

/// Most bytes held from a file at once: room for a whole record of
/// [`record::MAX_MESSAGE`] bytes with the CRI headers of its parts.
const CHUNK: usize = 2 * record::MAX_MESSAGE;
/// Bytes read per `read` call.
const READ: usize = 256 << 10;

/// Records of one container, and the place just after them.
#[derive(Debug)]
pub struct Batch {
    /// `<pod dir>/<container>`.
    pub key: String,
    pub labels: Arc<Labels>,
    pub records: Vec<Record>,
    /// Records cut at [`record::MAX_MESSAGE`].
    pub cut: u64,
    /// Where the next batch starts; the checkpoint once this one is shipped.
    pub end: Position,
}

/// A file being read.
enum Source {
    Plain(File),
    Gzip(Box<GzDecoder<File>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gzip(g) => g.read(buf),
        }
    }
}

struct Open {
    source: Source,
    /// Read, not yet made into records (the parts of an unended line).
    carry: Vec<u8>,
    /// A newer file exists: this one gets no more writes.
    finished: bool,
}

/// The reader of one container directory.
pub struct Tail {
    pub key: String,
    pub dir: PathBuf,
    pub labels: Arc<Labels>,
    /// Where the next record starts (read, maybe not yet shipped).
    pos: Option<Position>,
    open: Option<Open>,
    /// The last read found nothing new.
    idle: bool,
}

impl Tail {
    /// A reader of `dir` that starts at `pos` (a checkpoint), or at the
    /// beginning of its oldest file.
    pub fn new(key: String, dir: PathBuf, labels: Arc<Labels>, pos: Option<Position>) -> Tail {
        Tail {
            key,
            dir,
            labels,
            pos,
            open: None,
            idle: false,
        }
    }

    /// Whether the last call of [`Tail::next_batch`] found nothing more.
    pub fn idle(&self) -> bool {
        self.idle
    }

    /// The next records, at most `max_records`, or `None` when there is
    /// nothing new (yet).
    pub fn next_batch(&mut self, max_records: usize) -> io::Result<Option<Batch>> {
        self.idle = false;
        // Each turn reads more, or moves on to the next file.
        for _ in 0..(2 * CHUNK / READ) {
            if !self.ensure_open()? {
                break;
            }
            let n = self.fill()?;
            let open = self.open.as_mut().expect("opened above");
            let full = open.carry.len() >= CHUNK;
            let a = record::assemble(&open.carry, max_records, open.finished, full);
            if !a.records.is_empty() {
                open.carry.drain(..a.consumed);
                let pos = self.pos.as_mut().expect("an open file has a position");
                pos.offset += a.consumed as u64;
                return Ok(Some(Batch {
                    key: self.key.clone(),
                    labels: self.labels.clone(),
                    records: a.records,
                    cut: a.cut,
                    end: pos.clone(),
                }));
            }
            if n > 0 {
                continue;
            }
            let files = layout::list(&self.dir)?;
            let pos = self.pos.as_ref().expect("an open file has a position");
            let Some(next) = next_after(&files, pos, true) else {
                break;
            };
            if open.finished {
                let next = next.clone();
                self.open = None;
                self.pos = None;
                self.open_file(&next, 0)?;
            } else {
                // Read once more: what was written before the rotation.
                open.finished = true;
            }
        }
        self.idle = true;
        Ok(None)
    }

    /// Opens the file to read if none is: the checkpoint's, else the
    /// oldest. `false` when there is none.
    fn ensure_open(&mut self) -> io::Result<bool> {
        if self.open.is_some() {
            return Ok(true);
        }
        let files = layout::list(&self.dir)?;
        let (file, offset) = match &self.pos {
            None => match files.first() {
                Some(f) => (f.clone(), 0),
                None => return Ok(false),
            },
            Some(pos) => match files.iter().find(|f| is_same(f, pos, false)) {
                Some(f) => (f.clone(), pos.offset),
                None => {
                    let Some(f) = next_after(&files, pos, false) else {
                        return Ok(false);
                    };
                    warn!(
                        dir = %self.dir.display(),
                        offset = pos.offset,
                        "the log file the shipper was reading is gone: its lines past the \
                         checkpoint were not shipped"
                    );
                    (f.clone(), 0)
                }
            },
        };
        self.open_file(&file, offset)?;
        Ok(true)
    }

    /// Opens `file` at `offset` (uncompressed bytes).
    fn open_file(&mut self, file: &LogFile, offset: u64) -> io::Result<()> {
        let f = File::open(&file.path)?;
        let meta = f.metadata()?;
        let mut source = if file.compressed {
            Source::Gzip(Box::new(GzDecoder::new(f)))
        } else {
            Source::Plain(f)
        };
        let skipped = match &mut source {
            Source::Plain(f) => f.seek(SeekFrom::Start(offset))?,
            Source::Gzip(g) => io::copy(&mut g.take(offset), &mut io::sink())?,
        };
        if skipped < offset {
            warn!(path = %file.path.display(), offset, "log file shorter than the checkpoint");
        }
        let pos = match self.pos.take() {
            Some(p) if offset > 0 => Position {
                dev: meta.dev(),
                ino: meta.ino(),
                offset: skipped,
                ..p
            },
            _ => Position {
                dev: meta.dev(),
                ino: meta.ino(),
                head_len: 0,
                head_sha256: head_hash(b""),
                restart_count: file.restart_count,
                floor: file.rotated.clone().unwrap_or_else(now_stamp),
                offset: skipped,
            },
        };
        self.pos = Some(pos);
        self.open = Some(Open {
            source,
            carry: Vec::new(),
            finished: false,
        });
        if file.compressed {
            let head = read_head(file)?;
            self.set_head(&head);
        }
        Ok(())
    }

    /// Reads what follows into the carry; the bytes read.
    fn fill(&mut self) -> io::Result<usize> {
        let open = self.open.as_mut().expect("fill needs an open file");
        let start = open.carry.len();
        let want = READ.min(CHUNK.saturating_sub(start));
        open.carry.resize(start + want, 0);
        let mut n = 0;
        while n < want {
            match open.source.read(&mut open.carry[start + n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    open.carry.truncate(start + n);
                    return Err(e);
                }
            }
        }
        open.carry.truncate(start + n);
        if n > 0
            && let Some(Open {
                source: Source::Plain(f),
                ..
            }) = &self.open
            && self
                .pos
                .as_ref()
                .is_some_and(|p| p.head_len < HEAD_LEN as u64)
        {
            let mut head = vec![0; HEAD_LEN];
            let len = f.read_at(&mut head, 0)?;
            head.truncate(len);
            self.set_head(&head);
        }
        Ok(n)
    }

    fn set_head(&mut self, head: &[u8]) {
        if let Some(p) = &mut self.pos {
            p.head_len = head.len() as u64;
            p.head_sha256 = head_hash(head);
        }
    }
}

/// The stamp of now, in the form of rotated files' names.
fn now_stamp() -> String {
    let name = layout::rotated_name(0, std::time::SystemTime::now());
    name["0.log.".len()..].to_string()
}

/// The first [`HEAD_LEN`] bytes of a file, uncompressed.
fn read_head(file: &LogFile) -> io::Result<Vec<u8>> {
    let f = File::open(&file.path)?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    if file.compressed {
        GzDecoder::new(f)
            .take(HEAD_LEN as u64)
            .read_to_end(&mut head)?;
    } else {
        f.take(HEAD_LEN as u64).read_to_end(&mut head)?;
    }
    Ok(head)
}

/// Whether `file` is the file of `pos` (or its compressed copy). While
/// the file is `open`, its inode cannot be reused: the inode suffices.
fn is_same(file: &LogFile, pos: &Position, open: bool) -> bool {
    let same_inode =
        std::fs::metadata(&file.path).is_ok_and(|m| m.dev() == pos.dev && m.ino() == pos.ino);
    if same_inode && open {
        return true;
    }
    let copy = file.compressed && file.restart_count == pos.restart_count && pos.head_len > 0;
    (same_inode || copy) && head_matches(file, pos)
}

fn head_matches(file: &LogFile, pos: &Position) -> bool {
    let len = pos.head_len as usize;
    read_head(file).is_ok_and(|h| h.len() >= len && head_hash(&h[..len]) == pos.head_sha256)
}

/// The oldest file newer than the one of `pos`: a later run, or a later
/// rotation of the same run, or the run's current file.
fn next_after<'a>(files: &'a [LogFile], pos: &Position, open: bool) -> Option<&'a LogFile> {
    files.iter().find(|f| {
        let newer = f.restart_count > pos.restart_count
            || (f.restart_count == pos.restart_count
                && f.rotated.as_deref().is_none_or(|s| s > pos.floor.as_str()));
        newer && !is_same(f, pos, open)
    })
}

/// Where a container's logs are: `<namespace>_<app>_<instance>/<container>`.
pub fn labels_of(pod_dir_name: &str, container: &str, node: &str) -> Option<Labels> {
    let rest = pod_dir_name
        .strip_prefix(crate::logs::NAMESPACE)?
        .strip_prefix('_')?;
    let (app, instance) = rest.split_once('_')?;
    Some(Labels {
        app: app.into(),
        instance: instance.into(),
        container: container.into(),
        node: node.into(),
    })
}

/// The container directories under `log_dir`: `(key, dir, labels)`.
pub fn containers(log_dir: &Path, node: &str) -> io::Result<Vec<(String, PathBuf, Labels)>> {
    let mut out = Vec::new();
    let pods = match std::fs::read_dir(log_dir) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for pod in pods.flatten() {
        let pod_name = pod.file_name().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for c in entries.flatten() {
            let name = c.file_name().to_string_lossy().into_owned();
            if c.file_type().is_ok_and(|t| t.is_dir())
                && let Some(labels) = labels_of(&pod_name, &name, node)
            {
                out.push((format!("{pod_name}/{name}"), c.path(), labels));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
