//! One ELF file as the TLS analysis sees it: its bytes, its loadable segments (to turn a
//! virtual address into the file offset a uprobe takes), its sections when present, and its
//! identity (build id or content hash) for the cache.
//!
//! Addresses come from the file and are untrusted: every translation checks that the range
//! lies inside one segment's file-backed bytes, so a bad value yields `None`, never a read
//! out of bounds.

use super::InspectError;
use object::{Object, ObjectSection, ObjectSegment};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a binary is, independent of its path. The build id alone is not enough: `strip`
/// keeps it while moving bytes, so the file length goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    BuildId {
        build_id: String,
        len: u64,
    },
    /// SHA-256 of the whole file, for binaries without a build id.
    Sha256 {
        sha256: String,
        len: u64,
    },
}

impl Identity {
    /// A short stable key (file-name safe) for cache files and reports.
    pub fn key(&self) -> String {
        match self {
            Identity::BuildId { build_id, len } => format!("b-{build_id}-{len}"),
            Identity::Sha256 { sha256, len } => format!("s-{sha256}-{len}"),
        }
    }
}

/// A PT_LOAD segment's mapping between addresses and file bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub executable: bool,
}

/// A section's placement (name lookups only; stripped section headers leave none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Section {
    pub vaddr: u64,
    pub file_offset: u64,
    pub size: u64,
}

pub(crate) struct Image<'a> {
    pub bytes: &'a [u8],
    pub segments: Vec<Segment>,
    file: object::File<'a>,
}

impl<'a> Image<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, InspectError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(InspectError::NotElf);
        }
        let file =
            object::File::parse(bytes).map_err(|e| InspectError::Malformed(e.to_string()))?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(InspectError::UnsupportedArch(format!(
                "{:?}",
                file.architecture()
            )));
        }
        let mut segments = Vec::new();
        for seg in file.segments() {
            let (file_offset, file_size) = seg.file_range();
            let executable = match seg.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            let in_file = file_offset
                .checked_add(file_size)
                .is_some_and(|end| end <= bytes.len() as u64);
            if !in_file {
                return Err(InspectError::Malformed(format!(
                    "segment at file offset {file_offset:#x} (+{file_size:#x}) runs past the end"
                )));
            }
            segments.push(Segment {
                vaddr: seg.address(),
                file_offset,
                file_size,
                executable,
            });
        }
        Ok(Image {
            bytes,
            segments,
            file,
        })
    }

    pub fn object(&self) -> &object::File<'a> {
        &self.file
    }

    pub fn identity(&self) -> Identity {
        let len = self.bytes.len() as u64;
        match self.file.build_id() {
            Ok(Some(id)) if !id.is_empty() => Identity::BuildId {
                build_id: hex::encode(id),
                len,
            },
            _ => Identity::Sha256 {
                sha256: hex::encode(Sha256::digest(self.bytes)),
                len,
            },
        }
    }

    pub fn section(&self, name: &str) -> Option<Section> {
        let s = self.file.section_by_name(name)?;
        let (file_offset, size) = s.file_range()?;
        let end = file_offset.checked_add(size)?;
        (end <= self.bytes.len() as u64).then_some(Section {
            vaddr: s.address(),
            file_offset,
            size,
        })
    }

    pub fn section_bytes(&self, s: &Section) -> &'a [u8] {
        &self.bytes[s.file_offset as usize..(s.file_offset + s.size) as usize]
    }

    /// The file offset of `len` bytes at `vaddr`, if they all lie in one segment's file
    /// bytes (and, when `exec`, an executable one).
    pub fn offset_of(&self, vaddr: u64, len: u64, exec: bool) -> Option<u64> {
        let end = vaddr.checked_add(len)?;
        self.segments.iter().find_map(|s| {
            let seg_end = s.vaddr.checked_add(s.file_size)?;
            (vaddr >= s.vaddr && end <= seg_end && (!exec || s.executable))
                .then(|| s.file_offset + (vaddr - s.vaddr))
        })
    }

    /// The bytes at `vaddr`, bounds-checked as in [`Image::offset_of`].
    pub fn bytes_at(&self, vaddr: u64, len: u64, exec: bool) -> Option<&'a [u8]> {
        let off = self.offset_of(vaddr, len, exec)? as usize;
        self.bytes.get(off..off.checked_add(len as usize)?)
    }

    /// The virtual address of a file offset, if a segment maps it.
    pub fn vaddr_of(&self, file_offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            (file_offset >= s.file_offset && file_offset < s.file_offset + s.file_size)
                .then(|| s.vaddr + (file_offset - s.file_offset))
        })
    }

    /// The addend of the `R_X86_64_RELATIVE` dynamic relocation that fills the word at
    /// `vaddr` at load time (in a PIE, pointers in data are zero in the file).
    pub fn relative_addend(&self, vaddr: u64) -> Option<u64> {
        self.file.dynamic_relocations()?.find_map(|(at, r)| {
            let relative = matches!(
                r.flags(),
                object::RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE
            );
            (at == vaddr && relative).then(|| r.addend() as u64)
        })
    }

    /// The executable segments' file bytes with their start address.
    pub fn code(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        self.segments.iter().filter(|s| s.executable).map(|s| {
            let start = s.file_offset as usize;
            (s.vaddr, &self.bytes[start..start + s.file_size as usize])
        })
    }
}
