//! File-system helpers the WAL, blocks and the database share: directory fsync, sizes,
//! read-only mappings and the data directory's lock. Kept apart so those modules depend on
//! this one instead of on each other.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use memmap2::Mmap;

use crate::error::IoContext;
use crate::{Error, Result};

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", path)
}

/// Bytes of every file under `dir`.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Maps a WAL file (a segment or a checkpoint's) to replay it, its pages read in at once.
/// Reading segments into memory instead cost replay a tenth of its time at 10x: the kernel
/// zeroes every fresh page of a 128 MiB buffer before copying the file into it.
pub(crate) fn map_wal_file(path: &Path) -> std::io::Result<Mmap> {
    let f = File::open(path)?;
    // SAFETY: WAL files are only mapped while the database opens, under the data
    // directory's lock (no other m3query writes them), and this process only appends to a
    // segment after replay, and truncates a torn one after its mapping is dropped. A file
    // cut short by another program meanwhile would fault the process, as for blocks.
    unsafe { memmap2::MmapOptions::new().populate().map(&f) }
}

/// Maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let f = File::open(path).ctx("open", path)?;
    // SAFETY: block files are immutable once their directory is renamed into place; nothing
    // in this process writes or truncates them, and deletion keeps existing mappings valid.
    unsafe { Mmap::map(&f) }.ctx("mmap", path)
}

/// Takes the data directory's lock file, so two processes never open one database.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx("open", &path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.display().to_string())),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("lock {}", path.display()), e)),
    }
}
