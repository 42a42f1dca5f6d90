//! Bounds-checked decoder for what `read(2)` returns on a fanotify group created with
//! `FAN_REPORT_FID`: a sequence of events, each a `struct fanotify_event_metadata` followed by
//! info records (`struct fanotify_event_info_header` + payload).
//!
//! Pure: bytes in, typed records out. Every length read from the buffer is checked against the
//! bytes actually present before it is used; a broken event length stops the decoder (nothing
//! after it can be framed), a broken info record only spoils its own event.

use std::fmt;

/// `FANOTIFY_METADATA_VERSION` (uapi `linux/fanotify.h`).
pub const FANOTIFY_METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
pub const METADATA_LEN: usize = 24;
/// `sizeof(struct fanotify_event_info_header)`.
pub const INFO_HEADER_LEN: usize = 4;
/// `FAN_EVENT_INFO_TYPE_FID`: fsid + file handle.
pub const INFO_TYPE_FID: u8 = 1;
/// `FAN_EVENT_INFO_TYPE_DFID_NAME`: same prefix as FID (fsid + handle), then a name.
pub const INFO_TYPE_DFID_NAME: u8 = 2;
/// `FAN_EVENT_INFO_TYPE_DFID`: same layout as FID, for the parent directory.
pub const INFO_TYPE_DFID: u8 = 3;
/// `FAN_EVENT_INFO_TYPE_ERROR`: `int error; __u32 error_count`.
pub const INFO_TYPE_ERROR: u8 = 5;
/// header + `__kernel_fsid_t` (two `int`s).
const FID_MIN_LEN: usize = INFO_HEADER_LEN + 8;
/// `sizeof(struct file_handle)` without its flexible array: `handle_bytes`, `handle_type`.
const FILE_HANDLE_HEADER_LEN: usize = 8;
/// `sizeof(struct fanotify_event_info_error)`.
const ERROR_RECORD_LEN: usize = INFO_HEADER_LEN + 8;

/// A filesystem id as the kernel reports it: `statfs(2)`'s `f_fsid` and fanotify's
/// `__kernel_fsid_t` (`int val[2]`), which are the same value for a given superblock.
///
/// For ext4 it is derived from the filesystem UUID, so a new superblock on the same
/// `major:minor` (re-format, or another image on a reused device number) has a different fsid:
/// the fsid tells superblock incarnations apart where the device number cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fsid(pub [i32; 2]);

impl Fsid {
    /// Both halves as one 64-bit value (`val[0]` in the high half), convenient as a key or label.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.0[0] as u32) << 32) | u64::from(self.0[1] as u32)
    }
}

impl fmt::Display for Fsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}.{:08x}", self.0[0] as u32, self.0[1] as u32)
    }
}

/// The payload of a `FAN_EVENT_INFO_TYPE_ERROR` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The first error the filesystem reported since the event was last read (positive errno,
    /// e.g. 5 = EIO; ext4 uses EFSCORRUPTED = EUCLEAN = 117 for corruption).
    pub errno: i32,
    /// How many errors were merged into this event.
    pub count: u32,
}

/// One decoded event, before it is mapped to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub mask: u64,
    /// `FAN_NOFD` (-1) for every event of a `FAN_REPORT_FID` group; any other value is an open
    /// file descriptor the caller must close.
    pub fd: i32,
    pub pid: i32,
    /// From the first FID-shaped record (types 1, 2, 3).
    pub fsid: Option<Fsid>,
    /// `handle_type` of that record's file handle (`FILEID_INVALID` = 0xff when the error is not
    /// tied to an inode).
    pub handle_type: Option<i32>,
    pub error: Option<ErrorInfo>,
}

/// Why a stretch of the buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "truncated event metadata at offset {offset}: {available} bytes left, need {METADATA_LEN}"
    )]
    TruncatedMetadata { offset: usize, available: usize },
    #[error("unsupported fanotify metadata version {found} at offset {offset} (expected {FANOTIFY_METADATA_VERSION})")]
    Version { offset: usize, found: u8 },
    #[error("bad event framing at offset {offset}: event_len {event_len}, metadata_len {metadata_len}, {available} bytes left")]
    Framing {
        offset: usize,
        event_len: usize,
        metadata_len: usize,
        available: usize,
    },
    #[error("bad info record at offset {offset}: type {info_type}, len {len}, {available} bytes left in the event")]
    InfoRecord {
        offset: usize,
        info_type: u8,
        len: usize,
        available: usize,
    },
}

impl ParseError {
    /// True when the decoder cannot continue past this error (the event framing is lost).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ParseError::InfoRecord { .. })
    }
}

/// Decode every event in `buf`. Yields `Err` for a broken event; after a fatal error (see
/// [`ParseError::is_fatal`]) the iterator ends.
pub fn events(buf: &[u8]) -> Events<'_> {
    Events {
        buf,
        pos: 0,
        done: false,
    }
}

/// Iterator returned by [`events`].
#[derive(Debug)]
pub struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<RawEvent, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let offset = self.pos;
        match frame(self.buf, offset) {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok((metadata_len, event_len)) => {
                self.pos = offset + event_len;
                let event = &self.buf[offset..offset + event_len];
                Some(decode_event(event, metadata_len, offset))
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Check the metadata at `offset` and return `(metadata_len, event_len)`, both proven to fit.
fn frame(buf: &[u8], offset: usize) -> Result<(usize, usize), ParseError> {
    let rest = &buf[offset..];
    if rest.len() < METADATA_LEN {
        return Err(ParseError::TruncatedMetadata {
            offset,
            available: rest.len(),
        });
    }
    let truncated = || ParseError::TruncatedMetadata {
        offset,
        available: rest.len(),
    };
    let event_len = u32_at(rest, 0).ok_or_else(truncated)? as usize;
    let vers = rest[4];
    let metadata_len = usize::from(u16_at(rest, 6).ok_or_else(truncated)?);
    if vers != FANOTIFY_METADATA_VERSION {
        return Err(ParseError::Version {
            offset,
            found: vers,
        });
    }
    if metadata_len < METADATA_LEN || event_len < metadata_len || event_len > rest.len() {
        return Err(ParseError::Framing {
            offset,
            event_len,
            metadata_len,
            available: rest.len(),
        });
    }
    Ok((metadata_len, event_len))
}

/// Decode one framed event (`event` is exactly `event_len` bytes).
fn decode_event(event: &[u8], metadata_len: usize, offset: usize) -> Result<RawEvent, ParseError> {
    // The framing check guarantees METADATA_LEN bytes; the fallbacks are unreachable.
    let mut raw = RawEvent {
        mask: u64_at(event, 8).unwrap_or(0),
        fd: i32_at(event, 16).unwrap_or(-1),
        pid: i32_at(event, 20).unwrap_or(0),
        fsid: None,
        handle_type: None,
        error: None,
    };
    let mut pos = metadata_len;
    while pos < event.len() {
        let available = event.len() - pos;
        let bad = |info_type: u8, len: usize| ParseError::InfoRecord {
            offset: offset + pos,
            info_type,
            len,
            available,
        };
        if available < INFO_HEADER_LEN {
            return Err(bad(event[pos], 0));
        }
        let info_type = event[pos];
        let len = usize::from(u16_at(event, pos + 2).unwrap_or(0));
        if len < INFO_HEADER_LEN || len > available {
            return Err(bad(info_type, len));
        }
        let record = &event[pos..pos + len];
        match info_type {
            INFO_TYPE_FID | INFO_TYPE_DFID_NAME | INFO_TYPE_DFID => {
                if len < FID_MIN_LEN {
                    return Err(bad(info_type, len));
                }
                let fsid = Fsid([
                    i32_at(record, 4).ok_or_else(|| bad(info_type, len))?,
                    i32_at(record, 8).ok_or_else(|| bad(info_type, len))?,
                ]);
                // The file handle is informational; when present its own length must fit too.
                let handle_type = if len >= FID_MIN_LEN + FILE_HANDLE_HEADER_LEN {
                    let handle_bytes = u32_at(record, FID_MIN_LEN).unwrap_or(0) as usize;
                    if handle_bytes > len - FID_MIN_LEN - FILE_HANDLE_HEADER_LEN {
                        return Err(bad(info_type, len));
                    }
                    i32_at(record, FID_MIN_LEN + 4)
                } else {
                    None
                };
                if raw.fsid.is_none() {
                    raw.fsid = Some(fsid);
                    raw.handle_type = handle_type;
                }
            }
            INFO_TYPE_ERROR => {
                if len < ERROR_RECORD_LEN {
                    return Err(bad(info_type, len));
                }
                raw.error = Some(ErrorInfo {
                    errno: i32_at(record, 4).ok_or_else(|| bad(info_type, len))?,
                    count: u32_at(record, 8).ok_or_else(|| bad(info_type, len))?,
                });
            }
            // Records this watcher does not use (pidfd, target name, mount id, ...): skipped
            // by their checked length, so newer kernels do not break the decoder.
            _ => {}
        }
        pos += len;
    }
    Ok(raw)
}

/// Builders for well-formed byte buffers, for tests and benches of the decoder.
pub mod encode {
    use super::*;

    /// `fanotify_event_metadata` with `event_len` covering the given records.
    pub fn event(mask: u64, fd: i32, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: usize = records.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(METADATA_LEN + body);
        out.extend_from_slice(&((METADATA_LEN + body) as u32).to_ne_bytes());
        out.push(FANOTIFY_METADATA_VERSION);
        out.push(0);
        out.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&fd.to_ne_bytes());
        out.extend_from_slice(&pid.to_ne_bytes());
        for r in records {
            out.extend_from_slice(r);
        }
        out
    }

    /// A `FAN_EVENT_INFO_TYPE_FID` record with a file handle of `handle` bytes, padded to 4.
    pub fn fid(fsid: Fsid, handle_type: i32, handle: &[u8]) -> Vec<u8> {
        let unpadded = FID_MIN_LEN + FILE_HANDLE_HEADER_LEN + handle.len();
        let len = unpadded.div_ceil(4) * 4;
        let mut out = Vec::with_capacity(len);
        out.push(INFO_TYPE_FID);
        out.push(0);
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&fsid.0[0].to_ne_bytes());
        out.extend_from_slice(&fsid.0[1].to_ne_bytes());
        out.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        out.extend_from_slice(&handle_type.to_ne_bytes());
        out.extend_from_slice(handle);
        out.resize(len, 0);
        out
    }

    /// A `FAN_EVENT_INFO_TYPE_ERROR` record.
    pub fn error(errno: i32, count: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(ERROR_RECORD_LEN);
        out.push(INFO_TYPE_ERROR);
        out.push(0);
        out.extend_from_slice(&(ERROR_RECORD_LEN as u16).to_ne_bytes());
        out.extend_from_slice(&errno.to_ne_bytes());
        out.extend_from_slice(&count.to_ne_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode;
    use super::*;
    use crate::sys::{FAN_FS_ERROR, FAN_NOFD, FAN_Q_OVERFLOW, FILEID_INVALID};

    const FSID: Fsid = Fsid([0x1234_5678, -2]);

    fn fs_error(errno: i32, count: u32) -> Vec<u8> {
        encode::event(
            FAN_FS_ERROR,
            FAN_NOFD,
            0,
            &[
                encode::error(errno, count),
                encode::fid(FSID, FILEID_INVALID, &[]),
            ],
        )
    }

    #[test]
    fn decodes_an_fs_error_event_with_fid_and_error_records() {
        let buf = fs_error(5, 3);
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(
            got,
            vec![Ok(RawEvent {
                mask: FAN_FS_ERROR,
                fd: FAN_NOFD,
                pid: 0,
                fsid: Some(FSID),
                handle_type: Some(FILEID_INVALID),
                error: Some(ErrorInfo { errno: 5, count: 3 }),
            })],
            "one FS_ERROR event with errno 5, count 3 and the fsid expected"
        );
    }

    #[test]
    fn decodes_consecutive_events_in_order() {
        let mut buf = fs_error(5, 1);
        buf.extend(encode::event(FAN_Q_OVERFLOW, FAN_NOFD, 0, &[]));
        buf.extend(fs_error(117, 2));
        let masks: Vec<_> = events(&buf).map(|e| e.map(|e| (e.mask, e.error))).collect();
        assert_eq!(
            masks,
            vec![
                Ok((FAN_FS_ERROR, Some(ErrorInfo { errno: 5, count: 1 }))),
                Ok((FAN_Q_OVERFLOW, None)),
                Ok((
                    FAN_FS_ERROR,
                    Some(ErrorInfo {
                        errno: 117,
                        count: 2
                    })
                )),
            ]
        );
    }

    #[test]
    fn decodes_a_fid_record_with_a_real_file_handle() {
        let handle = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let buf = encode::event(
            FAN_FS_ERROR,
            FAN_NOFD,
            0,
            &[encode::fid(FSID, 1, &handle), encode::error(5, 1)],
        );
        let ev = events(&buf).next().expect("one event").expect("decodes");
        assert_eq!((ev.fsid, ev.handle_type), (Some(FSID), Some(1)));
    }

    #[test]
    fn skips_unknown_info_record_types_by_their_length() {
        let unknown = vec![42u8, 0, 8, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        let buf = encode::event(
            FAN_FS_ERROR,
            FAN_NOFD,
            0,
            &[unknown, encode::error(5, 1), encode::fid(FSID, 1, &[0; 8])],
        );
        let ev = events(&buf).next().expect("one event").expect("decodes");
        assert_eq!(ev.error, Some(ErrorInfo { errno: 5, count: 1 }));
        assert_eq!(ev.fsid, Some(FSID));
    }

    #[test]
    fn empty_buffer_yields_nothing() {
        assert_eq!(events(&[]).count(), 0);
    }

    #[test]
    fn truncated_metadata_is_a_fatal_error() {
        let buf = fs_error(5, 1);
        let got: Vec<_> = events(&buf[..10]).collect();
        assert_eq!(
            got,
            vec![Err(ParseError::TruncatedMetadata {
                offset: 0,
                available: 10
            })]
        );
    }

    #[test]
    fn event_len_beyond_the_buffer_is_a_fatal_error() {
        let buf = fs_error(5, 1);
        let cut = &buf[..buf.len() - 1];
        let got: Vec<_> = events(cut).collect();
        assert!(
            matches!(got.as_slice(), [Err(ParseError::Framing { .. })]),
            "a cut event must be a framing error, got {got:?}"
        );
    }

    #[test]
    fn event_len_shorter_than_metadata_is_a_fatal_error() {
        let mut buf = fs_error(5, 1);
        buf[0..4].copy_from_slice(&8u32.to_ne_bytes());
        let got: Vec<_> = events(&buf).collect();
        assert!(
            matches!(got.as_slice(), [Err(ParseError::Framing { .. })]),
            "{got:?}"
        );
    }

    #[test]
    fn zero_event_len_does_not_loop_forever() {
        let mut buf = fs_error(5, 1);
        buf[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(events(&buf).count(), 1, "one framing error, then the end");
    }

    #[test]
    fn wrong_metadata_version_is_a_fatal_error() {
        let mut buf = fs_error(5, 1);
        buf[4] = 2;
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(
            got,
            vec![Err(ParseError::Version {
                offset: 0,
                found: 2
            })]
        );
    }

    #[test]
    fn info_record_longer_than_its_event_spoils_only_that_event() {
        let mut bad = fs_error(5, 1);
        // The error record's len field (at metadata + 2) claims more than the event holds.
        bad[METADATA_LEN + 2..METADATA_LEN + 4].copy_from_slice(&200u16.to_ne_bytes());
        let mut buf = bad;
        buf.extend(fs_error(117, 1));
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(
                got[0],
                Err(ParseError::InfoRecord {
                    info_type: INFO_TYPE_ERROR,
                    len: 200,
                    ..
                })
            ),
            "{got:?}"
        );
        assert_eq!(
            got[1].as_ref().map(|e| e.error),
            Ok(Some(ErrorInfo {
                errno: 117,
                count: 1
            })),
            "the next event still decodes"
        );
    }

    #[test]
    fn info_record_with_len_below_its_header_is_rejected() {
        let mut buf = fs_error(5, 1);
        buf[METADATA_LEN + 2..METADATA_LEN + 4].copy_from_slice(&0u16.to_ne_bytes());
        let got: Vec<_> = events(&buf).collect();
        assert!(
            matches!(got.as_slice(), [Err(ParseError::InfoRecord { len: 0, .. })]),
            "{got:?}"
        );
    }

    #[test]
    fn short_error_record_is_rejected() {
        let short = vec![INFO_TYPE_ERROR, 0, 8, 0, 5, 0, 0, 0];
        let buf = encode::event(FAN_FS_ERROR, FAN_NOFD, 0, &[short]);
        let got: Vec<_> = events(&buf).collect();
        assert!(
            matches!(got.as_slice(), [Err(ParseError::InfoRecord { len: 8, .. })]),
            "{got:?}"
        );
    }

    #[test]
    fn file_handle_longer_than_its_record_is_rejected() {
        let mut fid = encode::fid(FSID, 1, &[0; 8]);
        fid[FID_MIN_LEN..FID_MIN_LEN + 4].copy_from_slice(&4096u32.to_ne_bytes());
        let buf = encode::event(FAN_FS_ERROR, FAN_NOFD, 0, &[fid, encode::error(5, 1)]);
        let got: Vec<_> = events(&buf).collect();
        assert!(
            matches!(
                got.as_slice(),
                [Err(ParseError::InfoRecord {
                    info_type: INFO_TYPE_FID,
                    ..
                })]
            ),
            "{got:?}"
        );
    }

    #[test]
    fn trailing_partial_info_header_is_rejected() {
        let buf = encode::event(
            FAN_FS_ERROR,
            FAN_NOFD,
            0,
            &[encode::error(5, 1), vec![1, 0]],
        );
        let got: Vec<_> = events(&buf).collect();
        assert!(
            matches!(got.as_slice(), [Err(ParseError::InfoRecord { .. })]),
            "{got:?}"
        );
    }

    #[test]
    fn fsid_renders_as_two_hex_words_and_packs_into_u64() {
        let f = Fsid([1, -1]);
        assert_eq!(f.to_string(), "00000001.ffffffff");
        assert_eq!(f.as_u64(), 0x0000_0001_ffff_ffff);
    }
}
