//! `cargo xtask package`: Debian packages `custodyd` and `custody-collector` (which
//! ships `custodyctl` too), built with dpkg-deb from `packaging/` — no packaging tool
//! to compile — and, with `--tarball`, a custodyd tarball for non-Debian hosts.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::binaries::{self, Profile};
use crate::util::{exec, output, root, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Cargo profile of the binaries: release, or dev (target/debug, what the tests
    /// package to spare a release build).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Where the .deb files (and the tarball) go [default: TARGET/packages].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Take the binaries from this directory instead of TARGET/PROFILE.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Package the binaries already built (skip `cargo build`).
    #[arg(long)]
    no_build: bool,
    /// Package version [default: the workspace's].
    #[arg(long)]
    version: Option<String>,
    /// Also build custodyd-VERSION-ARCH-linux.tar.gz (binary, config, unit, install.sh).
    #[arg(long)]
    tarball: bool,
}

/// One file in a package: source, path on the target system, mode.
struct Item {
    src: PathBuf,
    dest: &'static str,
    mode: u32,
}

struct Pkg {
    name: &'static str,
    description: &'static str,
    items: Vec<Item>,
    conffiles: &'static [&'static str],
    extra_depends: &'static [&'static str],
}

const MAINTAINER: &str = "Custody maintainers <custody@example.com>";

pub fn run(a: Args) -> Result<()> {
    let profile = Profile::named(&a.profile);
    let bin_dir = a.bin_dir.clone().unwrap_or_else(|| profile.bin_dir());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("packages"));
    if !a.no_build {
        if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1") {
            bail!(
                "AYA_BUILD_SKIP=1 builds a custodyd without kernel programs: unset it to package"
            );
        }
        binaries::build(profile)?;
    }
    let version = a
        .version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = |n: &str| -> Result<PathBuf> {
        let p = bin_dir.join(n);
        if !p.is_file() {
            bail!(
                "{} not built (cargo xtask build --profile {})",
                p.display(),
                profile.name()
            );
        }
        Ok(p)
    };
    let custodyd = bin("custodyd")?;
    if !has_bpf_object(&custodyd)? {
        bail!(
            "{} carries no kernel programs (built with AYA_BUILD_SKIP=1?): rebuild it without",
            custodyd.display()
        );
    }
    let pk = root().join("packaging");
    let pkgs = [
        Pkg {
            name: "custodyd",
            description: "Custody host sensor: eBPF chain of custody for AI agents\n \
                custodyd traces AI agent processes (declared, or discovered because they\n \
                call an LLM API or speak MCP) and everything they spawn: exec, files,\n \
                network, DNS and the TLS plaintext of their LLM/MCP/HTTP calls, with\n \
                agent identities, human principals and credential fingerprints. It ships\n \
                them to a Custody collector over mTLS and enforces kills, network\n \
                quarantines, credential revocations and policies in the kernel.",
            items: vec![
                Item {
                    src: custodyd.clone(),
                    dest: "usr/bin/custodyd",
                    mode: 0o755,
                },
                Item {
                    src: pk.join("custodyd/custodyd.toml"),
                    dest: "etc/custody/custodyd.toml",
                    mode: 0o644,
                },
                Item {
                    src: pk.join("custodyd/custodyd.service"),
                    dest: "lib/systemd/system/custodyd.service",
                    mode: 0o644,
                },
            ],
            conffiles: &["/etc/custody/custodyd.toml"],
            extra_depends: &[],
        },
        Pkg {
            name: "custody-collector",
            description: "Custody collector and operator CLI\n \
                custody-collector receives the events of custodyd sensors over mTLS\n \
                (enrollment with one-time tokens, its own CA), joins them into chains\n \
                from the human to every agent hop, evaluates Cedar policies, carries out\n \
                responses on every host, keeps an append-only audit log and serves the\n \
                web UI. custodyctl is the operator's command line for it.",
            items: vec![
                Item {
                    src: bin("custody-collector")?,
                    dest: "usr/bin/custody-collector",
                    mode: 0o755,
                },
                Item {
                    src: bin("custodyctl")?,
                    dest: "usr/bin/custodyctl",
                    mode: 0o755,
                },
                Item {
                    src: pk.join("custody-collector/collector.toml"),
                    dest: "etc/custody/collector.toml",
                    mode: 0o644,
                },
                Item {
                    src: pk.join("custody-collector/custody-collector.service"),
                    dest: "lib/systemd/system/custody-collector.service",
                    mode: 0o644,
                },
            ],
            conffiles: &["/etc/custody/collector.toml"],
            extra_depends: &["adduser"],
        },
    ];
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_string())
        .context("dpkg --print-architecture failed: is this a Debian host?")?;
    let stage_root = out.join(".stage");
    let _ = fs::remove_dir_all(&stage_root);
    for p in &pkgs {
        let deb = build_deb(p, &pk, &stage_root, &out, &version, &arch, profile)?;
        let size = fs::metadata(&deb)?.len();
        println!("{} ({:.1} MiB)", deb.display(), size as f64 / 1048576.0);
    }
    if a.tarball {
        let t = build_tarball(&pkgs[0], &pk, &stage_root, &out, &version)?;
        let size = fs::metadata(&t)?.len();
        println!("{} ({:.1} MiB)", t.display(), size as f64 / 1048576.0);
    }
    let _ = fs::remove_dir_all(&stage_root);
    Ok(())
}

/// Whether the binary embeds an eBPF ELF object (relocatable, e_machine 247 =
/// EM_BPF). Searched with grep: a byte scan in an unoptimised xtask is slow.
fn has_bpf_object(path: &Path) -> Result<bool> {
    let st = Command::new("grep")
        .args([
            "-q",
            "-a",
            "-P",
            r"\x7fELF\x02\x01\x01[\x00-\xff]{9}\x01\x00\xf7\x00",
        ])
        .arg(path)
        .env("LC_ALL", "C")
        .status()
        .context("running grep")?;
    Ok(st.success())
}

/// The highest GLIBC_2.N symbol version a binary needs (its glibc floor).
fn glibc_floor(path: &Path) -> Result<Option<(u32, u32)>> {
    let out = Command::new("grep")
        .args(["-a", "-o", r"GLIBC_2\.[0-9]*"])
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .context("running grep")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("GLIBC_2.")?.parse::<u32>().ok())
        .max()
        .map(|n| (2, n)))
}

/// Shared libraries a binary needs (ldd), by file name.
fn needed(path: &Path) -> BTreeSet<String> {
    output(Command::new("ldd").arg(path))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn copy_item(it: &Item, stage: &Path) -> Result<()> {
    let dest = stage.join(it.dest);
    fs::create_dir_all(dest.parent().expect("dest has a parent"))?;
    fs::copy(&it.src, &dest)
        .with_context(|| format!("copying {} to {}", it.src.display(), dest.display()))?;
    // Release and debug binaries alike are shipped without debug info.
    if it.mode & 0o111 != 0 && output(Command::new("strip").arg("--version")).is_some() {
        exec(Command::new("strip").arg("--strip-debug").arg(&dest))?;
    }
    fs::set_permissions(&dest, fs::Permissions::from_mode(it.mode))?;
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    fs::read_dir(p).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| {
                let m = e.metadata().ok();
                if m.as_ref().is_some_and(|m| m.is_dir()) {
                    dir_size(&e.path())
                } else {
                    m.map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

fn build_deb(
    p: &Pkg,
    pk: &Path,
    stage_root: &Path,
    out: &Path,
    version: &str,
    arch: &str,
    profile: Profile,
) -> Result<PathBuf> {
    let stage = stage_root.join(p.name);
    fs::create_dir_all(stage.join("DEBIAN"))?;
    for it in &p.items {
        copy_item(it, &stage)?;
    }
    let doc = stage.join("usr/share/doc").join(p.name);
    fs::create_dir_all(&doc)?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: custody\n\nFiles: *\nCopyright: Custody authors\nLicense: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
    )?;
    // Depends: glibc at the highest symbol version any binary needs, libgcc_s if linked.
    let mut floor = None;
    let mut libs = BTreeSet::new();
    for it in p.items.iter().filter(|i| i.mode & 0o111 != 0) {
        floor = floor.max(glibc_floor(&it.src)?);
        libs.extend(needed(&it.src));
    }
    let mut depends = vec![match floor {
        Some((a, b)) => format!("libc6 (>= {a}.{b})"),
        None => "libc6".to_string(),
    }];
    if libs.contains("libgcc_s.so.1") {
        depends.push("libgcc-s1".into());
    }
    for l in &libs {
        if !["linux-vdso.so.1", "libgcc_s.so.1", "libc.so.6", "libm.so.6"].contains(&l.as_str())
            && !l.starts_with("/lib64/ld-linux")
            && !l.starts_with("/lib/ld-linux")
        {
            bail!(
                "{}: links {l}, which the package's Depends does not cover",
                p.name
            );
        }
    }
    depends.extend(p.extra_depends.iter().map(|s| s.to_string()));
    let installed_kib = dir_size(&stage).div_ceil(1024);
    let control = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nDepends: {}\nSection: admin\nPriority: optional\n\
         Description: {}\n",
        p.name,
        depends.join(", "),
        p.description
    );
    fs::write(stage.join("DEBIAN/control"), control)?;
    let conffiles: String = p.conffiles.iter().map(|c| format!("{c}\n")).collect();
    fs::write(stage.join("DEBIAN/conffiles"), conffiles)?;
    for script in ["postinst", "prerm", "postrm"] {
        let src = pk.join(p.name).join(script);
        let dest = stage.join("DEBIAN").join(script);
        fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    }
    // md5sums of the payload (not DEBIAN/), as dpkg --verify and debsums read them.
    let files: Vec<String> = p
        .items
        .iter()
        .map(|i| i.dest.to_string())
        .chain([format!("usr/share/doc/{}/copyright", p.name)])
        .collect();
    let sums =
        output(Command::new("md5sum").current_dir(&stage).args(&files)).context("md5sum failed")?;
    fs::write(stage.join("DEBIAN/md5sums"), sums)?;
    let deb = out.join(format!("{}_{version}_{arch}.deb", p.name));
    // Debug binaries are big even stripped of debug info: compress them fast.
    let z: &[&str] = if profile == Profile::DEV {
        &["-Zgzip", "-z1"]
    } else {
        &["-Zxz"]
    };
    exec(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .args(z)
            .arg("--build")
            .arg(&stage)
            .arg(&deb)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(deb)
}

/// custodyd-VERSION-ARCH-linux.tar.gz: bin/, etc/, the systemd unit and install.sh.
fn build_tarball(
    p: &Pkg,
    pk: &Path,
    stage_root: &Path,
    out: &Path,
    version: &str,
) -> Result<PathBuf> {
    let name = format!("{}-{version}-{}-linux", p.name, std::env::consts::ARCH);
    let stage = stage_root.join(&name);
    let items = [
        ("bin/custodyd", 0o755, &p.items[0]),
        ("etc/custody/custodyd.toml", 0o644, &p.items[1]),
        ("systemd/custodyd.service", 0o644, &p.items[2]),
    ];
    for (dest, mode, it) in items {
        let d = stage.join(dest);
        fs::create_dir_all(d.parent().expect("parent"))?;
        fs::copy(&it.src, &d)?;
        if mode & 0o111 != 0 && output(Command::new("strip").arg("--version")).is_some() {
            exec(Command::new("strip").arg("--strip-debug").arg(&d))?;
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
    }
    for f in ["install.sh", "README"] {
        let d = stage.join(f);
        fs::copy(pk.join("tarball").join(f), &d)?;
        let mode = if f.ends_with(".sh") { 0o755 } else { 0o644 };
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
    }
    let floor = glibc_floor(&p.items[0].src)?.map_or(String::new(), |(a, b)| format!("{a}.{b}"));
    fs::write(
        stage.join("VERSION"),
        format!("custodyd {version}\nglibc >= {floor}\n"),
    )?;
    let tgz = out.join(format!("{name}.tar.gz"));
    exec(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tgz)
            .arg("-C")
            .arg(stage_root)
            .arg(&name),
    )?;
    Ok(tgz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_floor_is_the_highest_version_named() {
        let d = std::env::temp_dir().join(format!("xtask-glibc-{}", std::process::id()));
        fs::write(
            &d,
            b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0",
        )
        .unwrap();
        assert_eq!(glibc_floor(&d).unwrap(), Some((2, 34)));
        fs::write(&d, b"nothing").unwrap();
        assert_eq!(glibc_floor(&d).unwrap(), None);
        let _ = fs::remove_file(&d);
    }
}
