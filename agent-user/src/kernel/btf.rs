//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs read task, mm, file and socket fields with
//! `bpf_probe_read_kernel` at offsets patched in at load. Reading them here, from the
//! kernel's own type information, keeps the programs correct across kernel builds
//! without CO-RE relocations or kernel headers.

use std::collections::HashMap;

use agent_ebpf::Offsets;
use anyhow::{Context, Result, bail};

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    /// Bit offset inside the parent.
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for typedef/const/volatile/… .
    ty: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob: just enough to resolve member offsets by name.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

impl Btf {
    pub fn from_sys() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path)
            .with_context(|| format!("reading {path}: the kernel must be built with BTF"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            bail!("not a little-endian BTF blob");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let tstart = hdr_len + type_off;
        let types_raw = data
            .get(tstart..tstart + type_len)
            .context("type section out of range")?;
        let sstart = hdr_len + str_off;
        let strings = data
            .get(sstart..sstart + str_len)
            .context("string section out of range")?
            .to_vec();

        // Type ids start at 1; index 0 is "void".
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut p = 0;
        while p + 12 <= types_raw.len() {
            let name = u32_at(types_raw, p)?;
            let info = u32_at(types_raw, p + 4)?;
            let size_or_type = u32_at(types_raw, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(types_raw, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_raw, m)?,
                            ty: u32_at(types_raw, m + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    p += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => p += vlen * 12,
                _ => {} // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG: no trailer
            }
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.name != 0 && (t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
                let n = btf.name(t.name).to_string();
                btf.by_name.entry(n).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Strip typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].ty;
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in struct `id`, searching anonymous struct/union
    /// members too. Returns (offset, member type id).
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u64, u32)> {
        if depth > 8 {
            return None;
        }
        let t = self.types.get(self.resolve(id) as usize)?;
        for m in &t.members {
            if m.name == 0 {
                if let Some((off, ty)) = self.find_member(m.ty, member, depth + 1) {
                    return Some((u64::from(m.bit_offset / 8) + off, ty));
                }
            } else if self.name(m.name) == member {
                return Some((u64::from(m.bit_offset / 8), m.ty));
            }
        }
        None
    }

    /// Offset of a dotted member path (`"ns.inum"`) inside struct `strukt`.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u64> {
        let ids = self
            .by_name
            .get(strukt)
            .with_context(|| format!("kernel BTF has no struct {strukt}"))?;
        // Forward declarations have no members; take the first definition that resolves.
        for &id in ids {
            let mut cur = id;
            let mut total = 0u64;
            let mut ok = true;
            for part in path.split('.') {
                match self.find_member(cur, part, 0) {
                    Some((off, ty)) => {
                        total += off;
                        cur = ty;
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Ok(total);
            }
        }
        bail!("kernel BTF: struct {strukt} has no member {path}")
    }
}

/// Resolve every offset the kernel programs need.
pub fn offsets(btf: &Btf, tp_exec_filename: u64, tp_exit_group_dead: u64) -> Result<Offsets> {
    let o = |s: &str, m: &str| btf.offset(s, m);
    Ok(Offsets {
        task_real_parent: o("task_struct", "real_parent")?,
        task_group_leader: o("task_struct", "group_leader")?,
        task_tgid: o("task_struct", "tgid")?,
        task_pid: o("task_struct", "pid")?,
        task_start_boottime: o("task_struct", "start_boottime")?,
        // Without CONFIG_AUDIT there is no loginuid; the header then reads a harmless
        // field and user space treats the value as unset.
        task_loginuid: o("task_struct", "loginuid").unwrap_or(0),
        task_nsproxy: o("task_struct", "nsproxy")?,
        task_mm: o("task_struct", "mm")?,
        task_files: o("task_struct", "files")?,
        task_exit_code: o("task_struct", "exit_code")?,
        nsproxy_net_ns: o("nsproxy", "net_ns")?,
        net_ns_inum: o("net", "ns.inum")?,
        mm_arg_start: o("mm_struct", "arg_start")?,
        mm_arg_end: o("mm_struct", "arg_end")?,
        mm_env_start: o("mm_struct", "env_start")?,
        mm_env_end: o("mm_struct", "env_end")?,
        files_fdt: o("files_struct", "fdt")?,
        fdt_max_fds: o("fdtable", "max_fds")?,
        fdt_fd: o("fdtable", "fd")?,
        file_private_data: o("file", "private_data")?,
        file_inode: o("file", "f_inode")?,
        inode_mode: o("inode", "i_mode")?,
        socket_sk: o("socket", "sk")?,
        sk_family: o("sock_common", "skc_family")?,
        sk_daddr: o("sock_common", "skc_daddr")?,
        sk_rcv_saddr: o("sock_common", "skc_rcv_saddr")?,
        sk_dport: o("sock_common", "skc_dport")?,
        sk_num: o("sock_common", "skc_num")?,
        sk_v6_daddr: o("sock_common", "skc_v6_daddr")?,
        sk_v6_rcv_saddr: o("sock_common", "skc_v6_rcv_saddr")?,
        sk_type: o("sock", "sk_type")?,
        sk_protocol: o("sock", "sk_protocol")?,
        tp_exec_filename,
        tp_exit_group_dead,
        task_signal: o("task_struct", "signal")?,
        signal_live: o("signal_struct", "live")?,
        inet_sport: o("inet_sock", "inet_sport")?,
        tcp_bytes_acked: o("tcp_sock", "bytes_acked")?,
        tcp_bytes_received: o("tcp_sock", "bytes_received")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_known_offsets_on_this_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        let o = offsets(&btf, 8, 32).expect("all offsets resolve");
        // Sanity: distinct, non-zero where the field cannot be first.
        assert!(o.task_tgid > 0 && o.task_pid > 0 && o.task_tgid != o.task_pid);
        assert!(o.task_start_boottime > o.task_tgid);
        assert_eq!(
            o.sk_family, 16,
            "skc_family sits after the address/port unions"
        );
        assert!(btf.offset("task_struct", "no_such_member").is_err());
        assert!(btf.offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        assert!(
            Btf::parse(&[
                0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ])
            .is_err()
        );
    }
}
