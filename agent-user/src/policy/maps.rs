//! The kernel policy maps, replaced as a whole: the new rule set is written under
//! the inactive generation, the generation is flipped (one array write), then the
//! old generation's entries are deleted. A program run sees the old set or the new
//! one, never a mix; a failed write leaves the old set in force.

use agent_ebpf::{NetKey, NetRules, PathKey, PathRuleVal, PolicyMeta, policy};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};

use super::compile::MapEntries;

/// Entries per generation (each map holds two generations while swapping).
pub const PER_GENERATION: usize = 4096;

pub struct PolicyMaps {
    generation: Array<MapData, u32>,
    meta: Array<MapData, PolicyMeta>,
    net: LpmTrie<MapData, NetKey, NetRules>,
    paths: BpfHashMap<MapData, PathKey, PathRuleVal>,
    active: u32,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .take_map(name)
        .with_context(|| format!("{name} map missing"))?;
    T::try_from(m).with_context(|| format!("{name} map"))
}

impl PolicyMaps {
    /// Take the maps (after the programs using them are loaded). They start empty:
    /// no generation has rules.
    pub fn take(ebpf: &mut Ebpf) -> Result<PolicyMaps> {
        let generation: Array<MapData, u32> = take(ebpf, "POLICY_GEN")?;
        let active = generation.get(&0, 0).unwrap_or(0) & 1;
        Ok(PolicyMaps {
            generation,
            meta: take(ebpf, "POLICY_META")?,
            net: take(ebpf, "NET_DENY")?,
            paths: take(ebpf, "PATH_DENY")?,
            active,
        })
    }

    /// Replace the rules in force by `e`.
    pub fn install(&mut self, e: &MapEntries) -> Result<()> {
        if e.net.len() > PER_GENERATION || e.paths.len() > PER_GENERATION {
            bail!(
                "too many kernel rule entries ({} endpoint prefixes, {} paths; at most {PER_GENERATION} each)",
                e.net.len(),
                e.paths.len()
            );
        }
        let next = self.active ^ 1;
        // Leftovers of an interrupted swap.
        self.clear(next);
        if let Err(err) = self.write(next, e) {
            self.clear(next);
            return Err(err);
        }
        self.meta
            .set(next, e.meta, 0)
            .context("writing the policy summary")?;
        self.generation
            .set(0, next, 0)
            .context("switching the policy generation")?;
        let old = self.active;
        self.active = next;
        self.clear(old);
        Ok(())
    }

    fn write(&mut self, generation: u32, e: &MapEntries) -> Result<()> {
        for ((agent, net), rules) in &e.net {
            let key = Key::new(
                policy::NET_KEY_HEAD_BITS + u32::from(net.len),
                NetKey {
                    generation,
                    agent: *agent,
                    addr: net.addr,
                },
            );
            self.net
                .insert(&key, rules, 0)
                .with_context(|| format!("endpoint rule for {net}"))?;
        }
        for ((agent, len, hash), v) in &e.paths {
            let key = PathKey {
                generation,
                agent: *agent,
                len: *len,
                _pad: 0,
                hash: *hash,
            };
            self.paths.insert(key, v, 0).context("path rule")?;
        }
        Ok(())
    }

    /// Remove every entry of `generation` and its summary.
    fn clear(&mut self, generation: u32) {
        let _ = self.meta.set(generation, PolicyMeta::default(), 0);
        let keys: Vec<Key<NetKey>> = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in keys {
            let _ = self.net.remove(&k);
        }
        let keys: Vec<PathKey> = self
            .paths
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        for k in keys {
            let _ = self.paths.remove(&k);
        }
    }

    /// (endpoint prefixes, path entries) in force.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.active;
        let net = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == g)
            .count();
        let paths = self
            .paths
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == g)
            .count();
        (net, paths)
    }
}
