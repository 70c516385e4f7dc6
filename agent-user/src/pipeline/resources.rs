//! File, network and DNS records → events.

use std::net::{Ipv4Addr, Ipv6Addr};

use agent_ebpf::{DnsEvent, FileEvent, NetEvent, flag, kind};
use agent_user::credential;
use agent_user::intent::parse_dns_query;
use custody_proto::sensor::v1::{
    Connection, DnsQuery, FileAccess, FileOpen, FileRename, FileUnlink, NetSocket, event::Kind,
};

use super::{Output, Pipeline};

const AT_FDCWD: i32 = -100;

pub fn errno_text(ret: i64) -> String {
    if ret >= 0 {
        return String::new();
    }
    std::io::Error::from_raw_os_error((-ret) as i32).to_string()
}

/// Absolute form of a path given relative to `dirfd` (best effort: the process may
/// be gone by the time we look at its cwd).
fn absolute(tgid: u32, dirfd: i32, path: String) -> String {
    if path.starts_with('/') || path.is_empty() {
        return path;
    }
    let base = if dirfd == AT_FDCWD {
        std::fs::read_link(format!("/proc/{tgid}/cwd"))
    } else {
        std::fs::read_link(format!("/proc/{tgid}/fd/{dirfd}"))
    };
    match base {
        Ok(b) => b.join(path).to_string_lossy().into_owned(),
        Err(_) => path,
    }
}

fn access(flags: u32) -> FileAccess {
    match flags & 3 {
        0 => FileAccess::Read,
        1 => FileAccess::Write,
        _ => FileAccess::ReadWrite,
    }
}

impl Pipeline {
    pub(super) fn file(&mut self, e: &FileEvent, out: &mut Vec<Output>) {
        let tgid = e.hdr.tgid;
        let p1 = credential::escape_bytes(&e.path[..(e.path_len as usize).min(e.path.len())]);
        let path = absolute(tgid, e.dirfd, p1);
        let error = errno_text(e.ret);
        let k = match e.hdr.kind {
            kind::FILE_OPEN => Kind::FileOpen(FileOpen {
                path: path.clone(),
                flags: e.flags,
                mode: e.mode,
                result: e.ret,
                error,
                access: access(e.flags).into(),
                path_truncated: e.hdr.flags & flag::PATH_TRUNCATED != 0,
            }),
            kind::FILE_UNLINK => Kind::FileUnlink(FileUnlink {
                path: path.clone(),
                result: e.ret,
                error,
            }),
            _ => {
                let p2 =
                    credential::escape_bytes(&e.path2[..(e.path2_len as usize).min(e.path2.len())]);
                Kind::FileRename(FileRename {
                    from: path.clone(),
                    to: absolute(tgid, e.dirfd, p2),
                    result: e.ret,
                    error,
                })
            }
        };
        let ev = self.event(&e.hdr, k);
        out.push(Output::Event(ev));
        // A credential file opened successfully: fingerprint what it holds. The daemon
        // reads it itself (as root); the contents never leave this function.
        if e.hdr.kind == kind::FILE_OPEN
            && e.ret >= 0
            && credential::credential_file_kind(&path).is_some()
        {
            if let Ok(contents) = std::fs::read(&path) {
                let creds = credential::scan_file(&path, &contents, &self.key);
                for c in self.note_credentials(tgid, creds, out) {
                    let ev = self.event(
                        &e.hdr,
                        Kind::Credential(custody_proto::sensor::v1::CredentialSeen {
                            credential: Some(c),
                        }),
                    );
                    out.push(Output::Event(ev));
                }
            }
        }
    }
}

pub(super) fn addr(family: u16, a: &[u8; 16]) -> String {
    if family == 2 {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    } else {
        let v6 = Ipv6Addr::from(*a);
        match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        }
    }
}

pub fn net(e: &NetEvent) -> Kind {
    let op = match e.hdr.kind {
        kind::NET_CONNECT => "connect",
        kind::NET_ACCEPT => "accept",
        kind::NET_BIND => "bind",
        _ => "listen",
    };
    let protocol = match (e.protocol, e.sock_type) {
        (6, _) | (_, 1) => "tcp",
        (17, _) | (_, 2) => "udp",
        _ => "",
    };
    Kind::Net(NetSocket {
        op: op.into(),
        conn: Some(Connection {
            protocol: protocol.into(),
            family: if e.family == 2 { "ipv4" } else { "ipv6" }.into(),
            local_addr: addr(e.family, &e.local_addr),
            local_port: e.local_port.into(),
            remote_addr: addr(e.family, &e.remote_addr),
            remote_port: e.remote_port.into(),
        }),
        result: e.ret,
        // A non-blocking connect in progress is not a failure.
        error: if e.ret == -115 {
            String::new()
        } else {
            errno_text(e.ret)
        },
    })
}

pub fn dns(e: &DnsEvent) -> Option<Kind> {
    let data = &e.data[..(e.len as usize).min(e.data.len())];
    let (name, qtype) = parse_dns_query(data)?;
    Some(Kind::Dns(DnsQuery {
        name,
        qtype,
        server: format!("{}:{}", addr(e.family, &e.remote_addr), e.remote_port),
    }))
}
