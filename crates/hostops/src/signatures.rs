//! Pure recognition of on-disk signatures in the first and last MiB of a device.
//!
//! This is the native half of the content probe; it never decides "empty" on its own (blkid
//! gives the second opinion). Offsets follow the on-disk formats (and util-linux's libblkid).

/// A signature found on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Short name, blkid-style (`ext4`, `xfs`, `btrfs`, `swap`, `crypto_LUKS`, `LVM2_member`,
    /// `dos`, `gpt`, `iso9660`).
    pub name: &'static str,
    /// True for a mountable filesystem.
    pub filesystem: bool,
    /// Filesystem or container UUID when the format stores one.
    pub uuid: Option<String>,
}

/// What the native scan saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    pub signatures: Vec<Signature>,
    /// Any non-zero byte in the probed regions.
    pub nonzero: bool,
}

/// The probed bytes: `head` starts at offset 0, `tail` at `tail_offset`; `size` is the device
/// size. The two may overlap or coincide when the device is small.
pub struct Regions<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub tail_offset: u64,
    pub size: u64,
}

impl Regions<'_> {
    /// `len` bytes at absolute `offset`, if inside a probed region.
    fn at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if end <= self.head.len() as u64 {
            return Some(&self.head[offset as usize..end as usize]);
        }
        if offset >= self.tail_offset && end - self.tail_offset <= self.tail.len() as u64 {
            let s = (offset - self.tail_offset) as usize;
            return Some(&self.tail[s..s + len]);
        }
        None
    }

    fn eq(&self, offset: u64, magic: &[u8]) -> bool {
        self.at(offset, magic.len()) == Some(magic)
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Format 16 bytes as a canonical UUID; `None` when all zero.
pub fn uuid_string(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

fn ext(r: &Regions<'_>) -> Option<Signature> {
    const SB: u64 = 1024;
    let magic = r.at(SB + 0x38, 2)?;
    if le16(magic) != 0xEF53 {
        return None;
    }
    let compat = le32(r.at(SB + 0x5C, 4)?);
    let incompat = le32(r.at(SB + 0x60, 4)?);
    // ext4-only incompat features: extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
    // largedir, inline_data, encrypt, casefold.
    const EXT4_INCOMPAT: u32 =
        0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
    let name = if incompat & EXT4_INCOMPAT != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(Signature {
        name,
        filesystem: true,
        uuid: r.at(SB + 0x68, 16).and_then(uuid_string),
    })
}

fn xfs(r: &Regions<'_>) -> Option<Signature> {
    r.eq(0, b"XFSB").then(|| Signature {
        name: "xfs",
        filesystem: true,
        uuid: r.at(32, 16).and_then(uuid_string),
    })
}

fn btrfs(r: &Regions<'_>) -> Option<Signature> {
    const SB: u64 = 0x10000;
    r.eq(SB + 0x40, b"_BHRfS_M").then(|| Signature {
        name: "btrfs",
        filesystem: true,
        uuid: r.at(SB + 0x20, 16).and_then(uuid_string),
    })
}

fn swap(r: &Regions<'_>) -> Option<Signature> {
    for page in [4096u64, 8192, 16384, 65536] {
        if r.eq(page - 10, b"SWAPSPACE2") || r.eq(page - 10, b"SWAP-SPACE") {
            return Some(Signature {
                name: "swap",
                filesystem: false,
                uuid: r.at(1024 + 12, 16).and_then(uuid_string),
            });
        }
    }
    None
}

fn luks(r: &Regions<'_>) -> Option<Signature> {
    (r.eq(0, b"LUKS\xba\xbe") || r.eq(0, b"SKUL\xba\xbe")).then(|| Signature {
        name: "crypto_LUKS",
        filesystem: false,
        uuid: r.at(168, 40).map(|b| {
            String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
        }),
    })
}

fn lvm2(r: &Regions<'_>) -> Option<Signature> {
    // The label sits in one of the first four sectors.
    (0..4u64)
        .any(|s| r.eq(s * 512, b"LABELONE") && r.eq(s * 512 + 24, b"LVM2 001"))
        .then_some(Signature {
            name: "LVM2_member",
            filesystem: false,
            uuid: None,
        })
}

fn gpt(r: &Regions<'_>) -> Option<Signature> {
    let primary = r.eq(512, b"EFI PART") || r.eq(4096, b"EFI PART");
    let backup = r.size >= 512 && r.eq(r.size - 512, b"EFI PART");
    (primary || backup).then_some(Signature {
        name: "gpt",
        filesystem: false,
        uuid: None,
    })
}

fn mbr(r: &Regions<'_>) -> Option<Signature> {
    r.eq(510, &[0x55, 0xAA]).then_some(Signature {
        name: "dos",
        filesystem: false,
        uuid: None,
    })
}

fn iso9660(r: &Regions<'_>) -> Option<Signature> {
    r.eq(0x8001, b"CD001").then_some(Signature {
        name: "iso9660",
        filesystem: true,
        uuid: None,
    })
}

/// True when every byte is zero; compares 16 bytes at a time (the hot loop of the probe).
pub fn all_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    let words_zero = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    words_zero && chunks.remainder().iter().all(|&x| x == 0)
}

/// Scan the probed regions for every known signature and for non-zero bytes.
pub fn scan(r: &Regions<'_>) -> Scan {
    let detectors: [fn(&Regions<'_>) -> Option<Signature>; 9] =
        [ext, xfs, btrfs, swap, luks, lvm2, gpt, mbr, iso9660];
    Scan {
        signatures: detectors.iter().filter_map(|d| d(r)).collect(),
        nonzero: !all_zero(r.head) || !all_zero(r.tail),
    }
}

/// True when two filesystem type names denote the same on-disk family (ext2/3/4 are one:
/// the native scan and blkid may name a feature set differently).
pub fn same_family(a: &str, b: &str) -> bool {
    fn fam(s: &str) -> &str {
        if matches!(s, "ext2" | "ext3" | "ext4" | "ext4dev" | "jbd") {
            "ext"
        } else {
            s
        }
    }
    fam(a) == fam(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(head: &[u8]) -> Regions<'_> {
        Regions {
            head,
            tail: head,
            tail_offset: 0,
            size: head.len() as u64,
        }
    }

    #[test]
    fn zeroes_have_no_signature_and_no_data() {
        let z = vec![0u8; 1 << 20];
        assert_eq!(scan(&regions(&z)), Scan::default());
    }

    #[test]
    fn ext4_magic_and_features_are_recognised_with_uuid() {
        let mut b = vec![0u8; 1 << 20];
        b[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x2C2u32.to_le_bytes());
        b[1024 + 0x68..1024 + 0x78].copy_from_slice(&[0x11; 16]);
        let s = scan(&regions(&b));
        assert_eq!(s.signatures.len(), 1, "exactly one signature: {s:?}");
        assert_eq!(s.signatures[0].name, "ext4");
        assert_eq!(
            s.signatures[0].uuid.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
        assert!(s.nonzero);
    }

    #[test]
    fn ext_without_ext4_features_but_with_a_journal_is_ext3() {
        let mut b = vec![0u8; 4096];
        b[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[1024 + 0x5C] = 0x4;
        assert_eq!(scan(&regions(&b)).signatures[0].name, "ext3");
    }

    #[test]
    fn xfs_btrfs_swap_luks_lvm_gpt_mbr_iso_are_recognised() {
        let cases: [(&str, u64, &[u8]); 8] = [
            ("xfs", 0, b"XFSB"),
            ("btrfs", 0x10040, b"_BHRfS_M"),
            ("swap", 4086, b"SWAPSPACE2"),
            ("crypto_LUKS", 0, b"LUKS\xba\xbe"),
            ("gpt", 512, b"EFI PART"),
            ("dos", 510, &[0x55, 0xAA]),
            ("iso9660", 0x8001, b"CD001"),
            ("LVM2_member", 512, b"LABELONE"),
        ];
        for (name, off, magic) in cases {
            let mut b = vec![0u8; 1 << 20];
            b[off as usize..off as usize + magic.len()].copy_from_slice(magic);
            if name == "LVM2_member" {
                b[512 + 24..512 + 32].copy_from_slice(b"LVM2 001");
            }
            let s = scan(&regions(&b));
            assert!(
                s.signatures.iter().any(|x| x.name == name),
                "expected {name} in {s:?}"
            );
        }
    }

    #[test]
    fn a_backup_gpt_header_in_the_last_sector_is_recognised() {
        let head = vec![0u8; 4096];
        let mut tail = vec![0u8; 4096];
        tail[4096 - 512..4096 - 504].copy_from_slice(b"EFI PART");
        let r = Regions {
            head: &head,
            tail: &tail,
            tail_offset: (1 << 30) - 4096,
            size: 1 << 30,
        };
        assert!(scan(&r).signatures.iter().any(|s| s.name == "gpt"));
    }

    #[test]
    fn a_single_non_zero_byte_in_the_tail_is_data() {
        let head = vec![0u8; 4096];
        let mut tail = vec![0u8; 4096];
        tail[4095] = 1;
        let r = Regions {
            head: &head,
            tail: &tail,
            tail_offset: 1 << 30,
            size: (1 << 30) + 4096,
        };
        let s = scan(&r);
        assert!(
            s.signatures.is_empty() && s.nonzero,
            "expected plain non-zero data: {s:?}"
        );
    }

    #[test]
    fn all_zero_sees_a_single_non_zero_byte_anywhere() {
        for len in [0usize, 1, 15, 16, 17, 4096 + 7] {
            let mut b = vec![0u8; len];
            assert!(all_zero(&b), "len {len} zeroes");
            for i in 0..len {
                b[i] = 1;
                assert!(!all_zero(&b), "len {len}, byte {i}");
                b[i] = 0;
            }
        }
    }

    #[test]
    fn ext_family_names_match_each_other_but_not_xfs() {
        assert!(same_family("ext4", "ext3"));
        assert!(!same_family("ext4", "xfs"));
    }
}
