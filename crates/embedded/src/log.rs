//! The append-only atom log: numbered segment files of checksummed frames of records.
//!
//! A record's identity inside the store is its log offset, `segment << 32 | position`. The
//! log is the only source of truth; every index is derived from it and can be rebuilt by
//! replaying it. A frame is written with one `write` and carries a CRC-32C of its payload, so
//! a crash mid-write leaves a torn tail that the next writer cuts off.

use hart_store::StoreError;
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Frame header: magic, payload length, CRC of payload.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"HRT1");
pub const FRAME_HEADER: usize = 12;
/// A frame is written once its payload reaches this size. Small enough that the frame is
/// still in the core's cache when `write` copies it into the page cache: 512 KiB frames took
/// the 100 MiB text ingest from 1.63 to 1.51 s (median of 6, against 4 MiB; 128 KiB: 1.56 s),
/// unique binary unchanged.
pub const FRAME_TARGET: usize = 512 << 10;
/// A new segment starts when the current one would pass this size.
pub const SEGMENT_LIMIT: u64 = 1 << 30;

/// A position in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct LogPos {
    pub seg: u32,
    pub off: u64,
}

impl LogPos {
    pub fn global(&self) -> u64 {
        (u64::from(self.seg) << 32) | self.off
    }
}

/// Split a global offset into (segment, position).
#[inline]
pub fn split(o: u64) -> (usize, usize) {
    ((o >> 32) as usize, (o & 0xffff_ffff) as usize)
}

struct Segment {
    path: PathBuf,
    map: Option<Mmap>,
    /// Bytes of valid frames.
    len: u64,
}

/// What [`Log::scan`] calls for each good frame: its payload's offset and bytes.
pub type FrameVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// A log sync started by [`Log::start_sync`].
pub struct PendingSync {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl PendingSync {
    /// Wait until the segment's data is on disk (fdatasync).
    pub fn wait(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(|e| StoreError::io("sync", &self.path, e))
    }
}

pub struct Log {
    dir: PathBuf,
    segs: Vec<Segment>,
    /// Append handle on the last segment (writers only).
    file: Option<File>,
    /// The frame being built: header space, then the payload. Its records' offsets are
    /// already assigned.
    frame: Vec<u8>,
    /// Bytes appended since the last fsync.
    unsynced: u64,
    /// Offset in the last segment up to which writeback to the disk has been started.
    written_back: u64,
}

/// Written bytes after which their writeback is started (without waiting for it), so that
/// the disk works while ingest goes on and a sync finds little left to write.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Ask the kernel to start writing `file`'s bytes `from..to` to the disk, without waiting
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Advisory: durability still comes from
/// the fdatasync that follows, which also reports any write error; elsewhere a no-op.
fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), from as i64, (to - from) as i64, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Whether `dir` holds any log segment.
pub fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().ends_with(".seg")))
        .unwrap_or(false)
}

fn seg_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

impl Log {
    /// Open the segments in `dir` (creating the directory for a writer). Lengths are the
    /// files' sizes until [`Log::set_end`] says where the valid frames end.
    pub fn open(dir: &Path, writable: bool) -> Result<Log, StoreError> {
        if writable {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        }
        let mut names: Vec<usize> = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| StoreError::io("read", dir, e))?;
        for e in rd {
            let e = e.map_err(|e| StoreError::io("read", dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
                names.push(n);
            }
        }
        names.sort();
        for (i, n) in names.iter().enumerate() {
            if *n != i {
                return Err(StoreError::Corrupt {
                    path: seg_path(dir, *n),
                    offset: 0,
                    what: format!("log segment {i} is missing"),
                });
            }
        }
        let mut segs = Vec::new();
        for n in names {
            let path = seg_path(dir, n);
            let f = File::open(&path).map_err(|e| StoreError::io("read", &path, e))?;
            let len = f.metadata().map_err(|e| StoreError::io("read", &path, e))?.len();
            let map = map_file(&f, &path)?;
            segs.push(Segment { path, map, len });
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            segs,
            file: None,
            frame: {
                let mut f = Vec::with_capacity(FRAME_TARGET + 4096);
                f.resize(FRAME_HEADER, 0);
                f
            },
            unsynced: 0,
            written_back: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of segment `n`.
    pub fn segment_path(&self, n: usize) -> PathBuf {
        seg_path(&self.dir, n)
    }

    /// End of the written (not pending) log.
    pub fn end(&self) -> LogPos {
        match self.segs.last() {
            None => LogPos::default(),
            Some(s) => LogPos { seg: (self.segs.len() - 1) as u32, off: s.len },
        }
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }

    /// Cut the log at `end` (a writer after recovery: drops a torn tail and any segment
    /// after it) and open it for appending.
    pub fn truncate_and_open_for_append(&mut self, end: LogPos) -> Result<(), StoreError> {
        let keep = if self.segs.is_empty() { 0 } else { end.seg as usize + 1 };
        while self.segs.len() > keep {
            let s = self.segs.pop().expect("non-empty");
            drop(s.map);
            std::fs::remove_file(&s.path).map_err(|e| StoreError::io("remove", &s.path, e))?;
        }
        if self.segs.is_empty() {
            self.new_segment()?;
            return Ok(());
        }
        let last = self.segs.last_mut().expect("non-empty");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(|e| StoreError::io("open", &last.path, e))?;
        if last.len != end.off {
            f.set_len(end.off).map_err(|e| StoreError::io("truncate", &last.path, e))?;
            f.sync_all().map_err(|e| StoreError::io("sync", &last.path, e))?;
            last.len = end.off;
            last.map = map_file(&f, &last.path)?;
        }
        let mut f = f;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(0)).map_err(|e| StoreError::io("seek", &last.path, e))?;
        self.written_back = last.len;
        self.file = Some(f);
        Ok(())
    }

    fn new_segment(&mut self) -> Result<(), StoreError> {
        let path = seg_path(&self.dir, self.segs.len());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        sync_dir(&self.dir)?;
        self.segs.push(Segment { path, map: None, len: 0 });
        self.file = Some(f);
        self.written_back = 0;
        Ok(())
    }

    /// Set the valid length of each segment (from a replay) without touching files.
    pub fn set_end(&mut self, end: LogPos) {
        self.segs.truncate(if self.segs.is_empty() { 0 } else { end.seg as usize + 1 });
        if let Some(s) = self.segs.last_mut() {
            s.len = s.len.min(end.off);
        }
    }

    /// Offset the next appended record will have.
    #[inline]
    pub fn next_offset(&self) -> u64 {
        self.end().global() + self.frame.len() as u64
    }

    /// Start a record: moves to a new segment if the frame is empty and the segment is
    /// full, and returns the offset the record will have.
    #[inline]
    pub fn begin_record(&mut self) -> Result<u64, StoreError> {
        if self.frame.len() == FRAME_HEADER {
            self.ensure_room()?;
        }
        Ok(self.next_offset())
    }

    /// The pending frame's buffer, to encode one record into. Call [`Log::maybe_write`] after.
    #[inline]
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.frame
    }

    /// Write the pending frame if it is large; start a new segment first when needed.
    #[inline]
    pub fn maybe_write(&mut self) -> Result<(), StoreError> {
        if self.frame.len() >= FRAME_TARGET + FRAME_HEADER {
            self.write_frame()?;
        }
        Ok(())
    }

    /// Start a new segment when the current one is nearly full (only between frames).
    fn ensure_room(&mut self) -> Result<(), StoreError> {
        let end = self.end();
        if end.off + (FRAME_TARGET as u64) * 2 > SEGMENT_LIMIT {
            self.new_segment()?;
        }
        Ok(())
    }

    /// Write the pending frame (if any) to the segment with one `write`.
    pub fn write_frame(&mut self) -> Result<(), StoreError> {
        if self.frame.len() == FRAME_HEADER {
            return Ok(());
        }
        let seg = self.segs.last_mut().expect("writer has a segment");
        let file = self.file.as_mut().expect("writer has a file");
        let payload = (self.frame.len() - FRAME_HEADER) as u32;
        let crc = crc32fast::hash(&self.frame[FRAME_HEADER..]);
        self.frame[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        self.frame[4..8].copy_from_slice(&payload.to_le_bytes());
        self.frame[8..12].copy_from_slice(&crc.to_le_bytes());
        let out = &self.frame;
        if let Err(e) = file.write_all(out) {
            // Leave the file as it was before this frame; a later writer truncates anyway.
            let _ = file.set_len(seg.len);
            return Err(StoreError::io("write", &seg.path, e));
        }
        seg.len += out.len() as u64;
        self.unsynced += out.len() as u64;
        self.frame.truncate(FRAME_HEADER);
        if seg.len.saturating_sub(self.written_back) >= WRITEBACK_BYTES {
            start_writeback(file, self.written_back, seg.len);
            self.written_back = seg.len;
        }
        if seg.map.is_none() {
            seg.map = map_file(file, &seg.path)?;
        }
        Ok(())
    }

    /// fsync what is already written, without writing the pending frame.
    pub fn sync_written(&mut self) -> Result<(), StoreError> {
        if let (Some(f), Some(seg)) = (&self.file, self.segs.last()) {
            f.sync_data().map_err(|e| StoreError::io("sync", &seg.path, e))?;
        }
        Ok(())
    }

    /// Bytes written since the last sync.
    pub fn unsynced(&self) -> u64 {
        self.unsynced
    }

    /// Write the pending frame and fsync the segment: everything appended is durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.write_frame()?;
        if let (Some(f), Some(seg)) = (&self.file, self.segs.last()) {
            if self.unsynced > 0 {
                f.sync_data().map_err(|e| StoreError::io("sync", &seg.path, e))?;
            }
        }
        self.unsynced = 0;
        Ok(())
    }

    /// [`Log::sync`] in two halves, so that the wait for the disk can overlap other work:
    /// write the pending frame and return what has to reach the disk (a handle on the last
    /// segment, if it holds unsynced bytes). Pass it to [`Log::synced`] once
    /// [`PendingSync::wait`] has returned.
    pub fn start_sync(&mut self) -> Result<Option<PendingSync>, StoreError> {
        self.write_frame()?;
        match (&self.file, self.segs.last()) {
            (Some(f), Some(seg)) if self.unsynced > 0 => {
                let file = f.try_clone().map_err(|e| StoreError::io("sync", &seg.path, e))?;
                Ok(Some(PendingSync { file, path: seg.path.clone(), bytes: self.unsynced }))
            }
            _ => {
                self.unsynced = 0;
                Ok(None)
            }
        }
    }

    /// The bytes that `p` covered are durable.
    pub fn synced(&mut self, p: &PendingSync) {
        self.unsynced = self.unsynced.saturating_sub(p.bytes);
    }

    /// The bytes from global offset `o` to the end of its frame (or of the pending frame).
    #[inline]
    pub fn at(&self, o: u64) -> Option<&[u8]> {
        let (seg, pos) = split(o);
        let s = self.segs.get(seg)?;
        if pos as u64 >= s.len {
            if seg + 1 == self.segs.len() {
                let p = pos.checked_sub(s.len as usize)?;
                return self.frame.get(p..).filter(|_| p >= FRAME_HEADER);
            }
            return None;
        }
        s.map.as_deref()?.get(pos..s.len as usize)
    }

    /// Iterate frames from `from` to the end of the log, stopping at the first torn or
    /// corrupt frame. Calls `f(payload_offset, payload)` for each good frame and returns the
    /// end of the last good one.
    pub fn scan(&self, from: LogPos, f: &mut FrameVisitor<'_>) -> Result<LogPos, StoreError> {
        let mut pos = from;
        for (i, s) in self.segs.iter().enumerate().skip(from.seg as usize) {
            if i > from.seg as usize {
                pos = LogPos { seg: i as u32, off: 0 };
            }
            let Some(map) = s.map.as_deref() else {
                continue;
            };
            let data = &map[..(s.len as usize).min(map.len())];
            let mut p = pos.off as usize;
            while p + FRAME_HEADER <= data.len() {
                let magic = u32::from_le_bytes(data[p..p + 4].try_into().expect("4"));
                let len = u32::from_le_bytes(data[p + 4..p + 8].try_into().expect("4")) as usize;
                let crc = u32::from_le_bytes(data[p + 8..p + 12].try_into().expect("4"));
                let body = p + FRAME_HEADER;
                if magic != FRAME_MAGIC || body + len > data.len() || crc32fast::hash(&data[body..body + len]) != crc {
                    return Ok(LogPos { seg: i as u32, off: p as u64 });
                }
                f((i as u64) << 32 | body as u64, &data[body..body + len])?;
                p = body + len;
            }
            pos = LogPos { seg: i as u32, off: p as u64 };
            if p < data.len() {
                // Fewer bytes than a header: a torn tail.
                return Ok(pos);
            }
        }
        Ok(pos)
    }
}

/// A stretch of a segment that [`Log::scan_all`] could not read as frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadStretch {
    pub seg: u32,
    pub off: u64,
    pub len: u64,
    pub cause: String,
}

/// Whether a whole frame starts at `p` in `data`: the payload's start and length, or why not.
pub fn frame_at(data: &[u8], p: usize) -> Result<(usize, usize), String> {
    let Some(h) = data.get(p..p + FRAME_HEADER) else {
        return Err(format!("{} bytes after the last frame, fewer than a frame header", data.len() - p));
    };
    let magic = u32::from_le_bytes(h[..4].try_into().expect("4"));
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(h[8..12].try_into().expect("4"));
    if magic != FRAME_MAGIC {
        return Err(format!("no frame header (magic {magic:08x}, expected {FRAME_MAGIC:08x})"));
    }
    let body = p + FRAME_HEADER;
    if len > data.len() - body {
        return Err(format!("frame length {len} runs past the segment's end ({} bytes left)", data.len() - body));
    }
    let found = crc32fast::hash(&data[body..body + len]);
    if found != crc {
        return Err(format!("checksum mismatch: stored {crc:08x}, computed {found:08x}"));
    }
    Ok((body, len))
}

/// The next position after `p` where a whole frame with a matching checksum starts.
fn resync(data: &[u8], p: usize) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut q = p + 1;
    while q + FRAME_HEADER <= data.len() {
        let i = data[q..].windows(4).position(|w| w == magic)?;
        q += i;
        if frame_at(data, q).is_ok() {
            return Some(q);
        }
        q += 1;
    }
    None
}

impl Log {
    /// Like [`Log::scan`], but reads past damage: a stretch that is not a whole frame with a
    /// matching checksum is reported to `bad` (segment, offset, length, cause), and the scan
    /// resumes at the next position holding one. Returns the end of the last good frame.
    pub fn scan_all(
        &self,
        from: LogPos,
        f: &mut FrameVisitor<'_>,
        bad: &mut dyn FnMut(BadStretch),
    ) -> Result<LogPos, StoreError> {
        let mut end = from;
        for (i, s) in self.segs.iter().enumerate().skip(from.seg as usize) {
            let Some(map) = s.map.as_deref() else { continue };
            let data = &map[..(s.len as usize).min(map.len())];
            let mut p = if i == from.seg as usize { from.off as usize } else { 0 };
            while p < data.len() {
                match frame_at(data, p) {
                    Ok((body, len)) => {
                        f((i as u64) << 32 | body as u64, &data[body..body + len])?;
                        p = body + len;
                        end = LogPos { seg: i as u32, off: p as u64 };
                    }
                    Err(cause) => {
                        let next = resync(data, p).unwrap_or(data.len());
                        bad(BadStretch { seg: i as u32, off: p as u64, len: (next - p) as u64, cause });
                        p = next;
                    }
                }
            }
        }
        Ok(end)
    }

    /// The valid length of each segment (the last one's up to the end of its last frame).
    pub fn segment_lengths(&self) -> Vec<u64> {
        self.segs.iter().map(|s| s.len).collect()
    }

    /// The size of each segment's file as it is on disk now.
    pub fn file_lengths(&self) -> Vec<u64> {
        self.segs.iter().map(|s| std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0)).collect()
    }
}

impl Log {
    /// Drop this process's references to the mapped pages (the page cache keeps them): the
    /// writer reads old records now and then, and this keeps those reads from accumulating
    /// in its resident memory.
    pub fn release_pages(&self) {
        for s in &self.segs {
            if let Some(m) = &s.map {
                // SAFETY: a shared, read-only file mapping: dropping its pages loses nothing;
                // later reads fault them back in from the page cache.
                let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            }
        }
    }
}

/// Map a segment once at its largest possible length, so that appending never remaps it.
/// Only bytes below the segment's valid length are ever read (beyond the file's end a read
/// would fault), which the log guarantees.
fn map_file(f: &File, path: &Path) -> Result<Option<Mmap>, StoreError> {
    let len = f.metadata().map_err(|e| StoreError::io("read", path, e))?.len().max(SEGMENT_LIMIT);
    // SAFETY: segments are append-only; bytes below a segment's valid length never change
    // while any process maps them (a writer only truncates torn bytes past the valid end).
    let map =
        unsafe { memmap2::MmapOptions::new().len(len as usize).map(f) }.map_err(|e| StoreError::io("map", path, e))?;
    Ok(Some(map))
}

/// fsync a directory so that created or renamed entries are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io("sync", dir, e))
}
