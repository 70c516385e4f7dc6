//! Types shared by the kernel programs and the host daemon.
//!
//! Every ring-buffer record starts with an [`EventHeader`] whose first field is the
//! record kind; the daemon checks the record length against the kind before decoding.
//! All structs are `#[repr(C)]` with explicit padding so both sides agree on layout.
#![no_std]

/// Bytes of a path kept per event (`bpf_probe_read_user_str` bound).
pub const PATH_MAX: usize = 256;
/// Bytes of the NUL-separated argv kept per exec (read from `mm->arg_start` in the kernel).
pub const ARGS_MAX: usize = 1024;
/// Bytes of the NUL-separated environment kept per exec (never shipped off the host).
pub const ENV_MAX: usize = 4096;
/// Bytes of TLS plaintext per record (one TLS record's worth): a call that moved more
/// is emitted as several records (chunks) of one call, see [`TlsEvent`].
pub const TLS_MAX: usize = 16384;
/// Plaintext kept of one tracked process's `SSL_read`/`SSL_write` call unless the
/// daemon sets another cap (the `TLS_CAPTURE` array map): LLM request bodies are
/// 40–115 KB and the fields that matter sit well past the first 16 KB.
pub const TLS_CAPTURE_DEFAULT: u32 = TLS_CAPTURE_MAX;
/// Chunks one call may emit: the kernel's loop bound (a constant, so the verifier
/// accepts it). The verifier walks every iteration and its work grows steeply with
/// the count: 16 iterations exceeded its 1 M instruction budget on kernel 6.18, 8
/// load. Hence the largest cap the daemon can set (8 × 16 KiB = 128 KiB).
pub const TLS_CHUNKS_MAX: u32 = 8;
/// Largest settable cap of plaintext per call.
pub const TLS_CAPTURE_MAX: u32 = TLS_CHUNKS_MAX * TLS_MAX as u32;
/// Bytes of a UDP/53 payload kept (a DNS query is far smaller).
pub const DNS_MAX: usize = 256;
/// Bytes of a JSON line written to a pipe (stdio JSON-RPC, i.e. MCP) kept per write.
pub const PIPE_MAX: usize = 2048;
/// Bytes of the first write after a connect kept when it starts like a TLS handshake
/// record: a ClientHello with post-quantum key shares (Node, Chrome, rustls) is about
/// 1.8 KB, and the server name comes before the key shares in the usual order.
pub const HELLO_MAX: usize = 2048;

/// Record kinds (`EventHeader::kind`).
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const FILE_OPEN: u32 = 4;
    pub const FILE_UNLINK: u32 = 5;
    pub const FILE_RENAME: u32 = 6;
    pub const NET_CONNECT: u32 = 7;
    pub const NET_ACCEPT: u32 = 8;
    pub const NET_BIND: u32 = 9;
    pub const NET_LISTEN: u32 = 10;
    pub const DNS_QUERY: u32 = 11;
    pub const TLS_DATA: u32 = 12;
    pub const PIPE_WRITE: u32 = 13;
    /// A kernel policy rule denied a connect/sendmsg or killed a process at an open
    /// ([`super::PolicyEvent`]).
    pub const POLICY: u32 = 14;
    /// The first write on a connected TCP socket, when it starts like a TLS handshake
    /// record: the ClientHello ([`super::HelloEvent`]).
    pub const TLS_HELLO: u32 = 15;
    /// A socket whose ClientHello a tracked process sent reached TCP_CLOSE, with its
    /// byte counts ([`super::CloseEvent`]).
    pub const SOCK_CLOSE: u32 = 16;
}

/// `EventHeader::flags` bits.
pub mod flag {
    /// The path (or first path) was cut at [`super::PATH_MAX`].
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    pub const PATH2_TRUNCATED: u32 = 1 << 1;
    pub const ARGS_TRUNCATED: u32 = 1 << 2;
    pub const ENV_TRUNCATED: u32 = 1 << 3;
    pub const DATA_TRUNCATED: u32 = 1 << 4;
    /// The process is in the tracked map (an agent or a descendant of one).
    pub const TRACKED: u32 = 1 << 5;
    /// Reading part of the record from user or kernel memory failed.
    pub const READ_FAILED: u32 = 1 << 6;
    /// The process was stopped (SIGSTOP) for the daemon to vet it against revoked
    /// credentials; `ktime_ns` is the hold's `Held::held_ns`. On an exec record: held
    /// at exec, before the new image ran. On a TLS write record: held at the entry of
    /// SSL_write(_ex), before the request was encrypted; the record is emitted at
    /// entry for vetting only (the usual record follows when the call returns).
    pub const HELD: u32 = 1 << 7;
}

/// `Tracked::flags` bits.
pub mod track {
    /// Matched a declared agent selector.
    pub const DECLARED: u32 = 1 << 0;
    /// Reported as a discovered (undeclared) agent.
    pub const DISCOVERED: u32 = 1 << 1;
    /// Tracked because an ancestor is (set at fork).
    pub const INHERITED: u32 = 1 << 2;
    /// Recognised by the kernel at the exec itself (with `DECLARED`): `CUSTODY_AGENT=`
    /// in the environment.
    pub const KERNEL_ENV: u32 = 1 << 3;
    /// Recognised by the kernel at the exec itself (with `DECLARED`): the executable
    /// path of an `exe`-only selector.
    pub const KERNEL_EXE: u32 = 1 << 4;
}

/// Declared agents the kernel recognises at exec (`DECLARED_ENV`, `DECLARED_EXE`
/// maps: key [`policy::path_hash`] of the value, value the agent slot), so a child
/// forked in the first microseconds of a declared agent is tracked from its first
/// instruction instead of from the daemon's reading of the exec record.
pub mod declare {
    /// The environment marker of a declared agent.
    pub const ENV_PREFIX: &[u8] = b"CUSTODY_AGENT=";
    /// Bytes of a `CUSTODY_AGENT` value hashed in the kernel (longer values are still
    /// tracked, under slot 0 until the daemon names them).
    pub const VALUE_MAX: usize = 128;
    /// Entries of each selector map.
    pub const MAX: u32 = 1024;
}

/// Per-CPU counter slots in the `COUNTERS` map; the daemon sums them over CPUs.
pub mod counter {
    /// Ring buffer full: an event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    pub const PATH_TRUNCATED: u32 = 1;
    pub const ARGS_TRUNCATED: u32 = 2;
    pub const DATA_TRUNCATED: u32 = 3;
    /// The in-flight syscall map was full: an event was lost.
    pub const PENDING_FULL: u32 = 4;
    /// The tracked map was full: a child of an agent could not be tracked.
    pub const TRACKED_FULL: u32 = 5;
    pub const READ_FAILED: u32 = 6;
    /// Processes stopped at exec by the revocation hold.
    pub const HELD: u32 = 7;
    /// The `HELD` map was full (or the signal failed): a process ran unheld.
    pub const HOLD_FAILED: u32 = 8;
    /// Processes stopped at the entry of a request-shaped SSL_write (before send).
    pub const HELD_TLS: u32 = 9;
    /// As `HOLD_FAILED`, for a write that should have been held before send.
    pub const HOLD_TLS_FAILED: u32 = 10;
    /// Connects/sendmsgs refused by a kernel policy rule (endpoint deny).
    pub const POLICY_NET_DENIED: u32 = 11;
    /// Processes killed at an open by a kernel policy rule (forbidden path).
    pub const POLICY_OPEN_KILLED: u32 = 12;
    /// A TLS call whose later chunks were lost: a chunk's ring-buffer reservation
    /// failed (also counted in `RINGBUF_FULL`), so the rest of the call was dropped.
    pub const TLS_CHUNKS_LOST: u32 = 13;
    /// Bytes of TLS plaintext beyond the per-call cap, not captured (the call's last
    /// chunk carries `DATA_TRUNCATED`; `DATA_TRUNCATED` counts such calls).
    pub const TLS_BYTES_CAPPED: u32 = 14;
    /// A Go `crypto/tls.(*Conn).Read`/`Write` of a traced process reached one of its
    /// `RET` hooks with no call saved at entry for its goroutine (the entry record was
    /// evicted, or the call began before the hooks were attached): its plaintext was lost.
    pub const GO_TLS_MISSED: u32 = 15;
    /// Declared agents the kernel recognised and tracked at their exec.
    pub const DECLARED_AT_EXEC: u32 = 16;
    /// First writes after a connect that were inspected for a ClientHello (one per
    /// connection that wrote; later writes cost only the map lookup that misses).
    pub const HELLO_INSPECTED: u32 = 17;
    /// Of those, the ones that started like a TLS handshake record (emitted, or lost
    /// with `RINGBUF_FULL`).
    pub const HELLO_SEEN: u32 = 18;
    /// The open-connection map (`CONNS`) was full: a tracked connection's close record
    /// (its byte counts) will be missing.
    pub const CONNS_FULL: u32 = 19;
    /// A rustls TLS 1.3 record with padding after its content type: not emitted (its
    /// type cannot be read from the end without scanning the padding).
    pub const RUSTLS_PADDED: u32 = 20;
    /// A rustls record read on a socket nothing was written on yet (or whose receive was
    /// not seen): emitted under the socket's or the key's own id, not the connection's.
    pub const RUSTLS_UNBOUND: u32 = 21;
    /// A rustls key seen under two connection ids: a second write key on one socket
    /// (TLS 1.3 KeyUpdate: its first records went out under an id of their own), or a read
    /// key opened on a thread whose last receive was another socket (kept on its first id).
    pub const RUSTLS_SPLIT: u32 = 22;
    pub const COUNT: u32 = 23;
}

/// Revocation hold scope, the one value of the `HOLD` array map (written by the
/// daemon at run time: armed only while at least one revocation is cached).
pub mod hold {
    /// No hold.
    pub const OFF: u32 = 0;
    /// Hold processes whose environment the sensor reads: tracked ones (agents and
    /// their descendants), every process in observe-all mode.
    pub const TRACKED: u32 = 1;
    /// Hold every exec in the sensor's scope.
    pub const ALL: u32 = 2;
}

/// A process stopped at exec or before a TLS send, waiting for the daemon's verdict
/// (`HELD` map, key: tgid; pinned so a restarted daemon finds and settles it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// `group_leader->start_boottime`: guards against pid reuse.
    pub start_boottime: u64,
    /// `bpf_ktime_get_boot_ns()` when the process was stopped (also the held record's
    /// `ktime_ns`, so a record is matched to its own hold). Bit 0 is the kind
    /// ([`Held::TLS`]): the value layout is the one pinned since the exec hold, so
    /// pins left by an earlier daemon stay readable (it costs the clock 1 ns).
    pub held_ns: u64,
}

impl Held {
    /// `held_ns` bit 0: held at the entry of SSL_write(_ex), not at exec.
    pub const TLS: u64 = 1;

    /// The hold time for a hold of this kind.
    pub const fn stamp(now_ns: u64, tls: bool) -> u64 {
        if tls {
            now_ns | Held::TLS
        } else {
            now_ns & !Held::TLS
        }
    }

    pub const fn is_tls(&self) -> bool {
        self.held_ns & Held::TLS != 0
    }
}

/// An SSL_read/SSL_write(_ex) call between its entry uprobe and its return (the
/// `TLS_CALLS` map, key: pid_tgid). The daemon reads it to vet the writes of a process
/// held before send when the held record was lost. The map is pinned: a layout change
/// needs a new pin layout (`enforce::PIN_LAYOUT` in the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer (user memory of the caller).
    pub buf: u64,
    /// `size_t *` out-parameter of the `_ex` variants (0 for the plain ones).
    pub out_len: u64,
    /// Bytes asked for (`num`).
    pub len: u64,
    pub direction: u32,
    pub _pad: u32,
}

/// Value of the tracked-process map (key: tgid).
///
/// Besides the agent slot it caches the header fields that need kernel pointer
/// chasing (parent, start times, login uid, netns), filled by the first event of the
/// process, so later events of a tracked process cost one map lookup instead of a
/// dozen probe reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// Daemon-assigned agent slot (0 = none yet).
    pub agent: u32,
    pub flags: u32,
    /// 1 once the fields below are filled.
    pub cached: u32,
    pub ppid: u32,
    pub auid: u32,
    pub netns: u32,
    pub start_boottime: u64,
    pub parent_start_boottime: u64,
}

impl Tracked {
    pub const fn new(agent: u32, flags: u32) -> Tracked {
        Tracked {
            agent,
            flags,
            cached: 0,
            ppid: 0,
            auid: 0,
            netns: 0,
            start_boottime: 0,
            parent_start_boottime: 0,
        }
    }
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ktime_ns: u64,
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// tgid of `real_parent`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Audit login uid (`u32::MAX` when unset).
    pub auid: u32,
    /// Network namespace inode number.
    pub netns: u32,
    /// Agent slot from the tracked map (0 when untracked).
    pub agent: u32,
    pub cgroup_id: u64,
    /// `group_leader->start_boottime`: with tgid, the process key (exec id).
    pub start_boottime: u64,
    /// Start of the parent's thread-group leader.
    pub parent_start_boottime: u64,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    /// Bytes used in each buffer.
    pub path_len: u32,
    pub args_len: u32,
    pub env_len: u32,
    pub _pad: u32,
    pub path: [u8; PATH_MAX],
    pub args: [u8; ARGS_MAX],
    pub env: [u8; ENV_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    pub child_tgid: u32,
    pub _pad: u32,
    pub child_start_boottime: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// `task->exit_code`: exit status in bits 8..16, terminating signal in bits 0..7.
    pub exit_code: u32,
    pub _pad: u32,
}

/// openat/openat2, unlinkat and renameat2.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub hdr: EventHeader,
    /// Syscall return value (fd or -errno).
    pub ret: i64,
    pub dirfd: i32,
    /// open flags, unlinkat flags, or renameat2 flags.
    pub flags: u32,
    pub mode: u32,
    pub path_len: u32,
    pub path2_len: u32,
    pub _pad: u32,
    pub path: [u8; PATH_MAX],
    /// Rename target.
    pub path2: [u8; PATH_MAX],
}

/// connect, accept, bind and listen with the socket's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub hdr: EventHeader,
    pub ret: i64,
    pub fd: i32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// IPPROTO_TCP / IPPROTO_UDP (0 when unknown).
    pub protocol: u16,
    /// Socket type (SOCK_STREAM, SOCK_DGRAM).
    pub sock_type: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 addresses use the first 4 bytes (network order).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A UDP datagram sent to port 53.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub hdr: EventHeader,
    pub family: u16,
    pub remote_port: u16,
    pub len: u32,
    pub remote_addr: [u8; 16],
    pub data: [u8; DNS_MAX],
}

pub mod direction {
    pub const WRITE: u32 = 1;
    pub const READ: u32 = 2;
}

/// Plaintext of one successful SSL_read/SSL_write(_ex) call or Go
/// `crypto/tls.(*Conn).Read`/`Write` call, or one chunk of it (or, with `flag::HELD`,
/// of a write held at entry: `len` is then the length asked for).
///
/// A call that moved more than [`TLS_MAX`] bytes is emitted as consecutive records of
/// the same `call_id`, `offset` 0, `TLS_MAX`, 2·`TLS_MAX`, … up to the per-call cap;
/// the last one kept carries `DATA_TRUNCATED` when the call moved more than the cap.
/// A record at offset 0 always starts a call; a gap in the offsets is a lost chunk.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsEvent {
    pub hdr: EventHeader,
    /// The `SSL *` (Go: the `*tls.Conn`): tells connections of one process apart.
    pub conn: u64,
    /// Bytes the call actually transferred (the whole call, in every chunk).
    pub len: u32,
    /// Bytes kept in `data`.
    pub captured: u32,
    pub direction: u32,
    /// Where `data` starts within the call's buffer.
    pub offset: u32,
    /// The plaintext buffer in the process (read again by the daemon when a write
    /// held before send is longer than `data`).
    pub buf: u64,
    /// Tells the chunks of one call from those of the next (boot ns at emit time).
    pub call_id: u64,
    pub data: [u8; TLS_MAX],
}

/// A write of a JSON object to a pipe (stdio transport of MCP / JSON-RPC).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PipeEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    pub len: u32,
    pub captured: u32,
    pub _pad: u32,
    pub data: [u8; PIPE_MAX],
}

/// The first write on a TCP socket after its connect, when it starts like a TLS
/// handshake record (`0x16 0x03`, handshake type 1): the ClientHello, cut at
/// [`HELLO_MAX`] (`DATA_TRUNCATED` when the write was longer), and the socket's
/// 4-tuple. Emitted for every process in the sensor's scope (SNI is discovery
/// evidence); a tracked process's connection is then followed to its close.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HelloEvent {
    pub hdr: EventHeader,
    /// The `struct sock *`: names the connection until its [`CloseEvent`].
    pub sock: u64,
    /// `bpf_ktime_get_boot_ns()` at the connect's return.
    pub opened_ns: u64,
    pub fd: i32,
    /// Bytes the write asked to send.
    pub len: u32,
    /// Bytes kept in `data`.
    pub captured: u32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u16; 3],
    /// IPv4 addresses use the first 4 bytes (network order).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub data: [u8; HELLO_MAX],
}

/// A connection whose ClientHello a tracked process sent, at TCP_CLOSE. The state
/// change runs in whatever context closes the socket (often a softirq), so the header
/// is not the current task's: only `kind`, `flags`, `ktime_ns`, `tgid`, `agent` and
/// `start_boottime` are set, from what was saved at the hello.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub hdr: EventHeader,
    pub sock: u64,
    pub opened_ns: u64,
    /// `tcp_sock.bytes_acked`: bytes sent and acknowledged by the peer. Counted in
    /// sequence space, so a FIN acknowledged adds 1 to the payload.
    pub bytes_acked: u64,
    /// `tcp_sock.bytes_received`: bytes received (a FIN received adds 1 likewise).
    pub bytes_received: u64,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A socket connected and not written yet (`FIRST_WRITE` map, key `tgid << 32 | fd`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Armed {
    pub sock: u64,
    pub opened_ns: u64,
}

/// A tracked process's TLS connection until TCP_CLOSE (`CONNS` map, key: the
/// `struct sock *`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnOpen {
    pub tgid: u32,
    pub agent: u32,
    /// The hello record's header flags (`flag::TRACKED`).
    pub flags: u32,
    pub _pad: u32,
    pub start_boottime: u64,
    pub opened_ns: u64,
}

/// Kernel structure member offsets, read from the running kernel's BTF by the daemon
/// and patched into the programs at load, so no CO-RE or kernel headers are needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub task_real_parent: u64,
    pub task_group_leader: u64,
    pub task_tgid: u64,
    pub task_pid: u64,
    pub task_start_boottime: u64,
    pub task_loginuid: u64,
    pub task_nsproxy: u64,
    pub task_mm: u64,
    pub task_files: u64,
    pub task_exit_code: u64,
    pub nsproxy_net_ns: u64,
    pub net_ns_inum: u64,
    pub mm_arg_start: u64,
    pub mm_arg_end: u64,
    pub mm_env_start: u64,
    pub mm_env_end: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub file_private_data: u64,
    pub file_inode: u64,
    pub inode_mode: u64,
    pub socket_sk: u64,
    pub sk_family: u64,
    pub sk_daddr: u64,
    pub sk_rcv_saddr: u64,
    pub sk_dport: u64,
    pub sk_num: u64,
    pub sk_v6_daddr: u64,
    pub sk_v6_rcv_saddr: u64,
    pub sk_type: u64,
    pub sk_protocol: u64,
    /// Offset of the `filename` `__data_loc` in the sched_process_exec record.
    pub tp_exec_filename: u64,
    /// Offset of the `group_dead` flag in the sched_process_exit record; 0 where the
    /// kernel's record has none (before 6.16), and the programs then read
    /// `task->signal->live` instead.
    pub tp_exit_group_dead: u64,
    pub task_signal: u64,
    pub signal_live: u64,
    /// `inet_sock.inet_sport` (network order): the local port that stays set at
    /// TCP_CLOSE, when `skc_num` has already been cleared by the port's release.
    pub inet_sport: u64,
    /// `tcp_sock` byte counters, read at TCP_CLOSE.
    pub tcp_bytes_acked: u64,
    pub tcp_bytes_received: u64,
}

/// Run-time switches patched in at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Emit events for every process, not only tracked ones.
    pub observe_all: u32,
    /// The daemon's own tgid: never traced (its own work would feed back).
    pub self_tgid: u32,
    /// When non-zero, only processes in this network namespace (inode) exist for this
    /// sensor: one sensor per "host" when hosts are network namespaces of one kernel.
    pub netns: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding left implicit.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Tracked {}
}

/// A process to be killed at its next syscall (key: tgid). `start_boottime` guards
/// against pid reuse (0 matches any process with that tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillMark {
    pub start_boottime: u64,
    /// Daemon-side reference of the command (for confirmation), truncated.
    pub command: u32,
    pub _pad: u32,
}

/// A destination a quarantined process may still reach (the collector): address
/// (IPv4 in the first 4 bytes), port in host order, family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
}

/// Kernel policy rules: the chain-independent part of the collector's policies
/// (endpoint deny lists and forbidden paths per agent), compiled by the daemon into
/// the `NET_DENY` (LPM trie) and `PATH_DENY` (hash) maps.
///
/// Rule sets are double-buffered: every key carries a generation; the daemon writes
/// the new set under the inactive generation, then flips `POLICY_GEN` (one array
/// write, so a program run sees the old set or the new one, never a mix), then
/// deletes the old generation's entries.
pub mod policy {
    /// Agent slot under which rules for every agent are stored (the kernel looks up
    /// the process's own slot and this one).
    pub const ANY_AGENT: u32 = u32::MAX;
    /// `PolicyMeta::flags`: the generation has endpoint rules.
    pub const HAS_NET: u32 = 1 << 0;
    /// `PolicyMeta::flags`: the generation has path rules.
    pub const HAS_PATH: u32 = 1 << 1;
    /// Path match kinds (bits of `PathRuleVal::read` / `::write`): the path itself.
    pub const EXACT: u32 = 1 << 0;
    /// The directory itself and everything below it.
    pub const DIR: u32 = 1 << 1;
    /// Any path that starts with these bytes.
    pub const PREFIX: u32 = 1 << 2;
    /// `PolicyEvent::op`.
    pub const OP_CONNECT: u32 = 1;
    pub const OP_SENDMSG: u32 = 2;
    pub const OP_OPEN: u32 = 3;
    /// Port rules kept per address prefix and agent.
    pub const NET_RULES_MAX: usize = 16;
    /// Bits of `NetKey` before the address (generation and agent).
    pub const NET_KEY_HEAD_BITS: u32 = 64;
    /// Longest rule path the kernel can match (prefix lengths are 0..PATH_MAX-1).
    pub const PATH_LEN_MAX: usize = super::PATH_MAX - 1;
    /// Distinct rule path lengths the kernel checks per open (more: the rules of
    /// the other lengths are checked by the daemon after the open).
    pub const PATH_LENS_MAX: usize = 32;
    /// FNV-1a (64-bit) over path bytes: the kernel hashes each prefix of an absolute
    /// path incrementally; the daemon hashes rule paths with [`path_hash`].
    pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

    pub const fn path_hash(bytes: &[u8]) -> u64 {
        let mut h = FNV_OFFSET;
        let mut i = 0;
        while i < bytes.len() {
            h = (h ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        h
    }
}

/// Per-generation summary (`POLICY_META` array, index: generation 0 or 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    pub flags: u32,
    /// Entries used in `path_lens`.
    pub nlens: u32,
    /// The distinct lengths of the rule paths: the kernel looks up the prefix of
    /// each of these lengths only.
    pub path_lens: [u16; policy::PATH_LENS_MAX],
}

/// Data of a `NET_DENY` LPM trie key: generation and agent slot (always matched in
/// full), then the remote address as IPv6 (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetKey {
    pub generation: u32,
    pub agent: u32,
    pub addr: [u8; 16],
}

/// One denied (port, protocol) under an address prefix; 0 means any.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// Host order.
    pub port: u16,
    /// IPPROTO_TCP (6) / IPPROTO_UDP (17).
    pub proto: u8,
    pub _pad: u8,
    /// Daemon-side index of the rule (names the policy in the event).
    pub rule: u32,
}

/// `NET_DENY` value: the rules of this prefix and of every shorter prefix that
/// contains it (the trie returns only the longest match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRules {
    pub count: u32,
    pub _pad: u32,
    pub rules: [NetRule; policy::NET_RULES_MAX],
}

/// `PATH_DENY` key: a forbidden path (or prefix) of `len` bytes with FNV-1a `hash`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathKey {
    pub generation: u32,
    pub agent: u32,
    pub len: u32,
    pub _pad: u32,
    pub hash: u64,
}

/// `PATH_DENY` value: match kinds (`policy::EXACT | DIR | PREFIX`) forbidden for
/// reading and for writing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRuleVal {
    pub read: u32,
    pub write: u32,
    /// Daemon-side index of the rule.
    pub rule: u32,
    pub _pad: u32,
}

/// A kernel policy rule acted: a connect/sendmsg refused (EPERM) or a process
/// killed at openat/openat2 entry (SIGKILL, before the open ran).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PolicyEvent {
    pub hdr: EventHeader,
    /// `policy::OP_*`.
    pub op: u32,
    /// Daemon-side rule index from the map value.
    pub rule: u32,
    /// Open flags (opens).
    pub flags: u32,
    pub path_len: u32,
    /// AF_INET / AF_INET6 (network).
    pub family: u16,
    /// Remote port, host order.
    pub port: u16,
    pub proto: u16,
    pub _pad: u16,
    /// Remote address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    pub path: [u8; PATH_MAX],
}

#[cfg(feature = "user")]
mod pod_policy {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::PolicyMeta {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetRules {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::PathRuleVal {}
}

#[cfg(feature = "user")]
mod pod_enforce {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::KillMark {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Held {}
    unsafe impl aya::Pod for super::TlsCall {}
}
