//! Loading policy files: parse, read Custody's annotations, validate against the
//! schema (strict), and report every problem with its file, line and column.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicyId, PrincipalConstraint, ResourceConstraint,
    Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};

use super::guard::Guard;
use super::kernel::{self, KernelPlan};
use super::{Action, Enforcement, Response, Severity};

/// Custody's Cedar schema (`custody.cedarschema`).
pub const SCHEMA: &str = include_str!("custody.cedarschema");

/// Id of the built-in `permit(principal, action, resource);` that makes every set
/// deny-list style.
pub const BASE_PERMIT_ID: &str = "custody-base-permit";

/// The built-in policies (`collector/policies/*.cedar`), enabled by default. The
/// same files can be copied into a policy directory and edited there.
/// In file-name order, as `load_dir` reads them.
const BUILTIN: &[(&str, &str)] = &[
    (
        "credentials.cedar",
        include_str!("../../policies/credentials.cedar"),
    ),
    (
        "intent-drift.cedar",
        include_str!("../../policies/intent-drift.cedar"),
    ),
];

pub(crate) fn schema() -> &'static Schema {
    static SCHEMA_CELL: OnceLock<Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| {
        Schema::from_cedarschema_str(SCHEMA)
            .expect("custody.cedarschema parses")
            .0
    })
}

/// One policy, as `custodyctl policy list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub id: String,
    /// File the policy came from ("<builtin>" for the base permit).
    pub file: String,
    /// Line of the policy's first annotation or keyword.
    pub line: usize,
    /// "forbid" or "permit".
    pub effect: String,
    pub response: Response,
    pub severity: Severity,
    pub enforcement: Enforcement,
    /// Why the policy is (or is not) enforced in the kernel.
    pub why: String,
    /// `@description`, "" when absent.
    pub description: String,
    /// Actions the policy can apply to (from its action and resource scope).
    pub actions: Vec<Action>,
}

/// What went wrong with one policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not valid Cedar.
    Syntax,
    /// Valid Cedar that does not type-check against Custody's schema.
    Validation,
    /// A bad `@response`, `@severity` or `@id`, or a duplicate policy id.
    Annotation,
    /// Something Custody does not support (templates).
    Unsupported,
}

/// One problem, located in its file (line and column are 1-based; the column counts
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ErrorKind::Syntax => "syntax error",
            ErrorKind::Validation => "validation error",
            ErrorKind::Annotation => "annotation error",
            ErrorKind::Unsupported => "unsupported",
        };
        write!(
            f,
            "{}:{}:{}: {kind}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Loading failed; nothing was loaded (a caller keeps its previous set).
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyError>),
}

impl PolicyLoadError {
    /// The located problems (empty for I/O errors).
    pub fn errors(&self) -> &[PolicyError] {
        match self {
            PolicyLoadError::Io { .. } => &[],
            PolicyLoadError::Invalid(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LoadedPolicy {
    pub info: PolicyInfo,
    pub policy: Policy,
    /// Bit `Action::index()` set: the policy can apply to that action.
    pub mask: u16,
    /// `principal == Agent::"<id>"` in the scope.
    pub principal_eq: Option<String>,
    pub plan: KernelPlan,
    /// Pre-filter for evaluation (None: always evaluate).
    pub guard: Option<Guard>,
}

/// A validated set of Custody policies (plus the base permit).
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub(crate) policies: Vec<LoadedPolicy>,
    pub(crate) base: Policy,
    warnings: Vec<String>,
    files: Vec<String>,
}

impl PolicySet {
    /// Only the base permit: allows everything.
    pub fn empty() -> PolicySet {
        PolicySet {
            policies: Vec::new(),
            base: base_permit(),
            warnings: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The built-in policies (intent drift, credential inheritance).
    pub fn builtin() -> PolicySet {
        // The built-in files are constants the tests load.
        PolicySet::from_sources(BUILTIN.iter().map(|(n, t)| (n.to_string(), t.to_string())))
            .expect("built-in policies are valid")
    }

    /// The built-in policy files as (file name, text), e.g. to seed a policy directory.
    pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
        BUILTIN
    }

    /// Every `*.cedar` file directly in `dir`, in file-name order.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<PolicySet, PolicyLoadError> {
        let dir = dir.as_ref();
        let io = |path: &Path, source| PolicyLoadError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let path = entry.map_err(|e| io(dir, e))?.path();
            if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut sources = Vec::with_capacity(paths.len());
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            sources.push((p.display().to_string(), text));
        }
        PolicySet::from_sources(sources)
    }

    /// Policies from (file name, text) pairs. Every file is checked; all problems are
    /// returned together.
    pub fn from_sources(
        sources: impl IntoIterator<Item = (String, String)>,
    ) -> Result<PolicySet, PolicyLoadError> {
        let mut out = PolicySet::empty();
        let mut errors = Vec::new();
        let mut ids: HashSet<String> = HashSet::from([BASE_PERMIT_ID.to_string()]);
        for (file, text) in sources {
            load_file(&file, &text, &mut ids, &mut out, &mut errors);
            out.files.push(file);
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(PolicyLoadError::Invalid(errors))
        }
    }

    /// Every policy, the base permit first.
    pub fn list(&self) -> Vec<PolicyInfo> {
        std::iter::once(base_info())
            .chain(self.policies.iter().map(|p| p.info.clone()))
            .collect()
    }

    /// Custody policies (the base permit not counted).
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&PolicyInfo> {
        self.policies
            .iter()
            .find(|p| p.info.id == id)
            .map(|p| &p.info)
    }

    /// Validator warnings (e.g. a policy that can never apply), located like errors.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Files the set was loaded from.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The whole set as one Cedar policy set, base permit included.
    pub fn to_cedar(&self) -> cedar_policy::PolicySet {
        let mut ps = cedar_policy::PolicySet::new();
        for p in std::iter::once(&self.base).chain(self.policies.iter().map(|p| &p.policy)) {
            ps.add(p.clone()).expect("unique policy ids");
        }
        ps
    }
}

fn base_permit() -> Policy {
    Policy::parse(
        Some(PolicyId::new(BASE_PERMIT_ID)),
        "permit(principal, action, resource);",
    )
    .expect("base permit parses")
}

fn base_info() -> PolicyInfo {
    PolicyInfo {
        id: BASE_PERMIT_ID.into(),
        file: "<builtin>".into(),
        line: 0,
        effect: "permit".into(),
        response: Response::Alert,
        severity: Severity::Low,
        enforcement: Enforcement::Collector,
        why: "base permit: the set is deny-list style (forbid rules over it)".into(),
        description: "permit(principal, action, resource); always present".into(),
        actions: Action::ALL.to_vec(),
    }
}

/// 1-based (line, column) of a byte offset (column in characters).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

fn diag_errors(
    file: &str,
    text: &str,
    kind: ErrorKind,
    d: &DetailedError,
    fallback: usize,
    out: &mut Vec<PolicyError>,
) {
    let offset = d
        .source_locations
        .iter()
        .map(|l| l.loc.start)
        .min()
        .unwrap_or(fallback);
    let (line, column) = line_col(text, offset);
    let mut message = d.message.clone();
    if let Some(h) = &d.help {
        message.push_str(" (");
        message.push_str(h);
        message.push(')');
    }
    out.push(PolicyError {
        file: file.to_string(),
        line,
        column,
        kind,
        message,
    });
}

fn load_file(
    file: &str,
    text: &str,
    ids: &mut HashSet<String>,
    out: &mut PolicySet,
    errors: &mut Vec<PolicyError>,
) {
    let parsed = match cedar_policy::PolicySet::from_str(text) {
        Ok(p) => p,
        Err(errs) => {
            for e in errs.iter() {
                diag_errors(
                    file,
                    text,
                    ErrorKind::Syntax,
                    &DetailedError::from(e),
                    0,
                    errors,
                );
            }
            return;
        }
    };
    let error_at = |offset: usize, kind, message: String| {
        let (line, column) = line_col(text, offset);
        PolicyError {
            file: file.to_string(),
            line,
            column,
            kind,
            message,
        }
    };
    if let Some(t) = parsed.templates().next() {
        let off = text.find(&t.to_string()).unwrap_or(0);
        errors.push(error_at(
            off,
            ErrorKind::Unsupported,
            "policy templates (?principal / ?resource slots) are not supported".into(),
        ));
        return;
    }
    // Source order: the parser numbers policies policy0, policy1, ...
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let mut file_set = cedar_policy::PolicySet::new();
    let mut loaded = Vec::new();
    let mut start_of: HashMap<String, usize> = HashMap::new();
    let mut cursor = 0usize;
    let mut file_ok = true;
    for (n, p) in policies.iter().enumerate() {
        // The parser keeps each policy's original text: find it to locate the policy.
        let own = p.to_string();
        let start = text[cursor..]
            .find(&own)
            .map(|i| cursor + i)
            .unwrap_or(cursor);
        cursor = start + own.len().min(text.len() - start);
        let ann_at = |key: &str| own.find(&format!("@{key}")).map_or(start, |i| start + i);
        let id = match p.annotation("id") {
            Some(id) if id.trim().is_empty() || id.contains(char::is_control) => {
                errors.push(error_at(
                    ann_at("id"),
                    ErrorKind::Annotation,
                    format!("@id({id:?}): an id must be non-empty text on one line"),
                ));
                file_ok = false;
                continue;
            }
            Some(id) => id.to_string(),
            None => format!("{}#{n}", file_name(file)),
        };
        if !ids.insert(id.clone()) {
            errors.push(error_at(
                ann_at("id"),
                ErrorKind::Annotation,
                format!("duplicate policy id {id:?}"),
            ));
            file_ok = false;
            continue;
        }
        let response = match p.annotation("response") {
            None => Response::Alert,
            Some(v) => match Response::from_name(v) {
                Some(r) => r,
                None => {
                    errors.push(error_at(
                        ann_at("response"),
                        ErrorKind::Annotation,
                        format!(
                            "@response({v:?}): expected one of {}",
                            Response::ALL
                                .map(|r| format!("{:?}", r.as_str()))
                                .join(", ")
                        ),
                    ));
                    file_ok = false;
                    continue;
                }
            },
        };
        let severity = match p.annotation("severity") {
            None => Severity::Medium,
            Some(v) => match Severity::from_name(v) {
                Some(s) => s,
                None => {
                    errors.push(error_at(
                        ann_at("severity"),
                        ErrorKind::Annotation,
                        format!(
                            "@severity({v:?}): expected one of {}",
                            Severity::ALL
                                .map(|r| format!("{:?}", r.as_str()))
                                .join(", ")
                        ),
                    ));
                    file_ok = false;
                    continue;
                }
            },
        };
        let policy = p.new_id(PolicyId::new(&id));
        if file_set.add(policy.clone()).is_err() {
            // Unreachable: ids were checked unique above.
            file_ok = false;
            continue;
        }
        start_of.insert(id.clone(), start);
        let effect = match policy.effect() {
            Effect::Forbid => "forbid",
            Effect::Permit => "permit",
        };
        let mask = action_mask(&policy);
        let json = policy.to_json().ok();
        let plan = kernel::analyse(policy.effect(), json.as_ref(), mask);
        let guard = Guard::new(json.as_ref());
        let (enforcement, why) = plan.summary();
        loaded.push(LoadedPolicy {
            info: PolicyInfo {
                id,
                file: file.to_string(),
                line: line_col(text, start).0,
                effect: effect.into(),
                response,
                severity,
                enforcement,
                why,
                description: p.annotation("description").unwrap_or_default().to_string(),
                actions: Action::ALL
                    .into_iter()
                    .filter(|a| mask & (1 << a.index()) != 0)
                    .collect(),
            },
            principal_eq: principal_eq(&policy),
            policy,
            mask,
            plan,
            guard,
        });
    }
    if !file_ok {
        return;
    }
    let validator = Validator::new(schema().clone());
    let result = validator.validate(&file_set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let fallback = start_of
            .get(&e.policy_id().to_string())
            .copied()
            .unwrap_or(0);
        diag_errors(
            file,
            text,
            ErrorKind::Validation,
            &DetailedError::from(e),
            fallback,
            errors,
        );
    }
    if !result.validation_passed() {
        return;
    }
    for w in result.validation_warnings() {
        let d = DetailedError::from(w);
        let offset = d.source_locations.first().map_or(0, |l| l.loc.start);
        let (line, column) = line_col(text, offset);
        out.warnings
            .push(format!("{file}:{line}:{column}: warning: {}", d.message));
    }
    out.policies.extend(loaded);
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn principal_eq(p: &Policy) -> Option<String> {
    match p.principal_constraint() {
        PrincipalConstraint::Eq(uid) if uid.type_name().to_string() == "Agent" => {
            Some(uid.id().unescaped().to_string())
        }
        _ => None,
    }
}

/// Entity types whose entities can be `in` an entity of type `t`.
pub(crate) fn types_in(t: &str) -> &'static [&'static str] {
    match t {
        "Dir" => &["Dir", "File"],
        "Domain" => &["Domain", "Endpoint"],
        "Group" => &["Group", "Human"],
        "File" => &["File"],
        "Endpoint" => &["Endpoint"],
        "Agent" => &["Agent"],
        "Credential" => &["Credential"],
        "Tool" => &["Tool"],
        "Model" => &["Model"],
        "Human" => &["Human"],
        "Host" => &["Host"],
        _ => &[],
    }
}

fn action_of(uid: &EntityUid) -> Option<Action> {
    (uid.type_name().to_string() == "Action")
        .then(|| Action::from_name(uid.id().unescaped()))
        .flatten()
}

/// Actions a policy can apply to: its action scope, narrowed by the resource types
/// its resource scope admits.
pub(crate) fn action_mask(p: &Policy) -> u16 {
    let mut mask: u16 = match p.action_constraint() {
        ActionConstraint::Any => u16::MAX,
        ActionConstraint::Eq(uid) => action_of(&uid).map_or(0, |a| 1 << a.index()),
        ActionConstraint::In(uids) => uids
            .iter()
            .filter_map(action_of)
            .fold(0, |m, a| m | (1 << a.index())),
    };
    let types: Option<Vec<String>> = match p.resource_constraint() {
        ResourceConstraint::Any => None,
        ResourceConstraint::Eq(uid) => Some(vec![uid.type_name().to_string()]),
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => Some(vec![t.to_string()]),
        ResourceConstraint::In(uid) => Some(
            types_in(&uid.type_name().to_string())
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    };
    if let Some(types) = types {
        for a in Action::ALL {
            if !a
                .resource_types()
                .iter()
                .any(|t| types.iter().any(|x| x == t))
            {
                mask &= !(1 << a.index());
            }
        }
    }
    mask & ((1 << Action::ALL.len()) - 1)
}
