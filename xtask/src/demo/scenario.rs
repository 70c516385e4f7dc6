//! The sample agents' world: a test CA and a localhost certificate (openssl CLI), the
//! local HTTPS stand-in (tests/agents/tls_server.py), a DNS stub, fake credentials
//! shaped like real ones, and one round of the scenario.

pub use custody_tests::DnsStub;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::procs::{Proc, StopWith, Watch, run_output};

const SUPERVISOR_PY: &str = include_str!("finance_supervisor.py");
/// One round normally takes a few seconds; the margin is for a busy 2-core machine.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// ca.pem (with ca.key) and a server certificate for localhost / 127.0.0.1.
pub fn write_certs(dir: &Path) -> Result<()> {
    let ossl = |args: &[&str]| -> Result<()> {
        run_output(
            Command::new("openssl").current_dir(dir).args(args),
            "openssl (generating the demo's test certificates)",
        )
        .map(|_| ())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Custody demo CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ossl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    ossl(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid:always\n",
    )?;
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])
}

/// A DNS stub on the first free address of a few in 127.0.0.0/8 (systemd-resolved
/// owns 127.0.0.53 and 127.0.0.54), so the agents' DNS lookups stay on this machine.
pub fn dns_stub() -> Result<DnsStub> {
    let mut last = None;
    for i in 0..8 {
        match DnsStub::bind(&format!("127.0.{}.53", 77 + i)) {
            Ok(stub) => return Ok(stub),
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "could not bind a DNS stub on 127.0.77-84.53:53: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}

/// Fake secrets in the shapes custodyd recognises, fresh for every demo. They are
/// handed to the agents through their environment and never printed.
pub struct Secrets {
    openai_key: String,
    aws_key_id: String,
    aws_secret: String,
    /// A bearer JWT delegating alice's authority to the finance supervisor.
    delegation_jwt: String,
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b
}

fn random_string(alphabet: &[u8], n: usize) -> String {
    random_bytes(n)
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

fn b64url(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Secrets {
    pub fn generate() -> Secrets {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "iss": "https://idp.example.com",
            "sub": "alice@example.com",
            "aud": "https://finance-api.example.com",
            "scope": "reports:read ledger:read",
            "act": {"sub": "finance-supervisor"},
            "iat": now,
            "exp": now + 3600,
        });
        let delegation_jwt = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes()),
            b64url(&random_bytes(32))
        );
        Secrets {
            openai_key: format!("sk-proj-{}", random_string(ALNUM, 48)),
            aws_key_id: format!(
                "AKIA{}",
                random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
            ),
            aws_secret: random_string(B64, 40),
            delegation_jwt,
        }
    }
}

/// The real interpreter behind `python3` (not a pyenv or asdf shim script, whose
/// bash helpers would fill every chain).
pub fn python() -> Result<PathBuf> {
    let out = run_output(
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]),
        "python3 (the sample agents are Python programs)",
    )?;
    let p = PathBuf::from(out.trim());
    if !p.is_absolute() {
        bail!("python3 reports no usable interpreter path ({out:?})");
    }
    Ok(p)
}

/// The HTTPS stand-in for the LLM provider and the finance API.
pub fn start_tls_server(
    python: &Path,
    root: &Path,
    work: &Path,
    log: &Path,
) -> Result<(Proc, String)> {
    let mut p = Proc::spawn(
        "tls_server.py",
        Command::new(python)
            .arg(root.join("tests/agents/tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key"))
            .current_dir(work),
        StopWith::Term,
        log,
        Watch::Stdout,
    )?;
    let port = p.wait_line("its port", Duration::from_secs(20), |l| {
        l.trim().parse::<u16>().is_ok()
    })?;
    Ok((p, port.trim().to_string()))
}

pub struct World {
    pub root: PathBuf,
    pub python: PathBuf,
    /// Holds ca.pem, the agents' files and their output.
    pub work: PathBuf,
    pub tls_port: String,
    pub dns_ip: String,
    pub secrets: Secrets,
}

/// What one round did.
pub struct Round {
    pub supervisor_pid: Option<u32>,
    pub steps: usize,
}

impl World {
    /// A clean environment, as a service manager would give an agent: nothing of
    /// cargo's or the user's besides PATH, HOME and the locale.
    fn agent_env(&self, cmd: &mut Command) {
        cmd.env_clear();
        for keep in ["PATH", "HOME", "LANG", "TERM"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.env("OPENAI_API_KEY", &self.secrets.openai_key)
            .env("AWS_ACCESS_KEY_ID", &self.secrets.aws_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secrets.aws_secret)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&self.work);
    }

    /// One round: the finance supervisor (declared) with its tools and its sub-agent,
    /// then llm_client.py on its own, a "shadow" agent nobody declared.
    pub fn round(&self, n: u64) -> Result<Round> {
        let supervisor = self.work.join("finance_supervisor.py");
        std::fs::write(&supervisor, SUPERVISOR_PY)
            .with_context(|| format!("writing {}", supervisor.display()))?;
        let log = self.work.join("supervisor.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(&self.python);
        self.agent_env(&mut cmd);
        cmd.arg(&supervisor)
            .arg(self.root.join("tests/agents"))
            .arg(&self.work)
            .arg(&self.tls_port)
            .arg(&self.dns_ip)
            .arg(format!("custody-demo-round-{n}"))
            .env("CUSTODY_AGENT", "finance-supervisor")
            .env("FINANCE_API_TOKEN", &self.secrets.delegation_jwt);
        let mut p = Proc::spawn(
            "finance_supervisor.py",
            &mut cmd,
            StopWith::Term,
            &log,
            Watch::Stdout,
        )?;
        let st = p.finish(ROUND_TIMEOUT)?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !st.success() {
            bail!(
                "the finance supervisor failed ({st}); its output ({}):\n{}",
                log.display(),
                p.tail()
            );
        }
        let supervisor_pid = text
            .lines()
            .find_map(|l| l.strip_prefix("SUPERVISOR_PID "))
            .and_then(|v| v.trim().parse().ok());
        let steps = text.lines().filter(|l| l.starts_with("STEP ")).count();
        drop(p);

        let log = self.work.join("shadow.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(&self.python);
        self.agent_env(&mut cmd);
        cmd.arg(self.root.join("tests/agents/llm_client.py"))
            .arg(&self.tls_port)
            .arg(self.work.join("ca.pem"));
        let mut p = Proc::spawn(
            "llm_client.py",
            &mut cmd,
            StopWith::Term,
            &log,
            Watch::Stdout,
        )?;
        let st = p.finish(ROUND_TIMEOUT)?;
        if !st.success() {
            bail!(
                "llm_client.py failed ({st}); its output ({}):\n{}",
                log.display(),
                p.tail()
            );
        }
        Ok(Round {
            supervisor_pid,
            steps,
        })
    }
}
