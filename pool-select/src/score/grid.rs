//! `grid`: Dynamo's global-router pool selection, with pool names instead of indices.
//!
//! Aggregated: `pool = agg_pool_mapping[ttft_idx][itl_idx]`. Disaggregated: prefill pool =
//! `prefill_pool_mapping[isl_idx][ttft_idx]`, decode pool =
//! `decode_pool_mapping[ctx_idx][itl_idx]`, where the context length is the prompt length.
//! Each axis: `idx = clamp(floor((x - min) / ((max - min) / resolution)), 0, resolution - 1)`;
//! a missing (or NaN) target uses the middle of its range. Then each table's
//! `priority_overrides` apply: the first rule whose inclusive `[min_priority, max_priority]`
//! holds the request's priority replaces the grid's pool.
//!
//! The grid names its pool, so priority tiers do not apply; but if the named pool was filtered
//! out (unhealthy, saturated, other model), the request spills over to the next eligible pool
//! *of the same table* (named in its mapping or overrides) in `filter::priority::spill_order`.
//! Disaggregated decisions forward to the decode pool and carry the prefill pool beside it.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::decision::{header_safe, Removal};
use crate::filter::priority::spill_order;
use crate::pool::{PoolFacts, PoolView, RequestFeatures};
use crate::score::Choice;

/// `grid` settings: either `agg`, or both `prefill` and `decode`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agg: Option<AggGrid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<PrefillGrid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<DecodeGrid>,
}

/// Aggregated grid (Dynamo's `agg_pool_selection_strategy`): rows by TTFT target, columns by
/// ITL target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggGrid {
    pub ttft_min_ms: f64,
    pub ttft_max_ms: f64,
    pub ttft_resolution: u32,
    pub itl_min_ms: f64,
    pub itl_max_ms: f64,
    pub itl_resolution: u32,
    /// `[ttft_idx][itl_idx]` → pool name.
    pub agg_pool_mapping: Vec<Vec<String>>,
    #[serde(default)]
    pub priority_overrides: Vec<PriorityOverride>,
}

/// Prefill grid (Dynamo's `prefill_pool_selection_strategy`): rows by prompt length, columns
/// by TTFT target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefillGrid {
    pub isl_min: u64,
    pub isl_max: u64,
    pub isl_resolution: u32,
    pub ttft_min_ms: f64,
    pub ttft_max_ms: f64,
    pub ttft_resolution: u32,
    /// `[isl_idx][ttft_idx]` → pool name.
    pub prefill_pool_mapping: Vec<Vec<String>>,
    #[serde(default)]
    pub priority_overrides: Vec<PriorityOverride>,
}

/// Decode grid (Dynamo's `decode_pool_selection_strategy`): rows by context length (the
/// prompt length), columns by ITL target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeGrid {
    pub context_length_min: u64,
    pub context_length_max: u64,
    pub context_length_resolution: u32,
    pub itl_min_ms: f64,
    pub itl_max_ms: f64,
    pub itl_resolution: u32,
    /// `[ctx_idx][itl_idx]` → pool name.
    pub decode_pool_mapping: Vec<Vec<String>>,
    #[serde(default)]
    pub priority_overrides: Vec<PriorityOverride>,
}

/// Send requests whose priority is in `[min_priority, max_priority]` to `target_pool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityOverride {
    pub min_priority: i64,
    pub max_priority: i64,
    pub target_pool: String,
}

/// One grid axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Axis {
    /// Short name in reasons (`ttft`, `itl`, `isl`, `ctx`).
    pub label: &'static str,
    pub min: f64,
    pub max: f64,
    pub resolution: u32,
}

impl Axis {
    /// The cell index of `x`; `None` or NaN means the middle of the range.
    pub fn index(&self, x: Option<f64>) -> usize {
        let x = x.filter(|x| !x.is_nan()).unwrap_or((self.min + self.max) / 2.0);
        let step = (self.max - self.min) / f64::from(self.resolution);
        let raw = ((x - self.min) / step).floor();
        // `as` saturates (negative → 0, +inf → u64::MAX); then clamp to the last cell.
        (raw as u64).min(u64::from(self.resolution - 1)) as usize
    }
}

/// A validated table: `cells[row][col]` are pool indices.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table {
    rows: Axis,
    cols: Axis,
    cells: Vec<Vec<usize>>,
    /// `(min_priority, max_priority, pool)`.
    overrides: Vec<(i64, i64, usize)>,
    /// Every pool the table names, sorted: where its spill-over may go.
    members: Vec<usize>,
    /// `agg`, `prefill` or `decode`.
    role: &'static str,
}

/// A compiled grid policy.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Grid {
    Agg(Table),
    Disagg { prefill: Table, decode: Table },
}

/// Where one table sent the request, and how it got there.
struct Resolved {
    pool: usize,
    text: String,
}

impl Table {
    /// The table's pool for `(row_x, col_x, priority)`, or a spill-over target among
    /// `eligible`; on failure, the eligible pools the table cannot use.
    fn resolve(
        &self,
        views: &[PoolView<'_>],
        eligible: &[usize],
        row_x: Option<f64>,
        col_x: Option<f64>,
        priority: Option<i64>,
    ) -> Result<Resolved, Vec<Removal>> {
        let (row, col) = (self.rows.index(row_x), self.cols.index(col_x));
        let cell = self.cells[row][col];
        let name = |i: usize| header_safe(&views[i].facts.name);
        let mut text = format!("{}={row} {}={col} -> {}", self.rows.label, self.cols.label, name(cell));
        let mut target = cell;
        let rule = priority.and_then(|p| self.overrides.iter().position(|&(lo, hi, _)| (lo..=hi).contains(&p)));
        if let Some(k) = rule {
            target = self.overrides[k].2;
            text.push_str(&format!(" override={k} -> {}", name(target)));
        }
        if eligible.contains(&target) {
            return Ok(Resolved { pool: target, text });
        }
        let usable = eligible.iter().copied().filter(|i| self.members.binary_search(i).is_ok());
        match spill_order(views, views[target].facts.priority, usable, |_| None).first() {
            Some(&pool) => {
                text.push_str(&format!(" spill -> {}", name(pool)));
                Ok(Resolved { pool, text })
            }
            None => Err(self.outsiders(views, eligible)),
        }
    }

    /// The eligible pools this table does not name, as removals.
    fn outsiders(&self, views: &[PoolView<'_>], eligible: &[usize]) -> Vec<Removal> {
        let why = match self.role {
            "agg" => "not in the agg mapping",
            "prefill" => "not in the prefill mapping",
            _ => "not in the decode mapping",
        };
        eligible
            .iter()
            .filter(|i| self.members.binary_search(i).is_err())
            .map(|&i| Removal { pool: i, name: views[i].facts.name.clone(), filter: "grid", why })
            .collect()
    }

    /// The table's other usable pools in spill-over order from `pool`.
    fn fallbacks(&self, views: &[PoolView<'_>], eligible: &[usize], pool: usize) -> Vec<usize> {
        let others = eligible.iter().copied().filter(|&i| i != pool && self.members.binary_search(&i).is_ok());
        spill_order(views, views[pool].facts.priority, others, |_| None)
    }
}

impl Grid {
    pub(crate) fn choose(
        &self,
        features: &RequestFeatures,
        views: &[PoolView<'_>],
        eligible: &[usize],
    ) -> Result<Choice, Vec<Removal>> {
        let (ttft, itl, prio) = (features.ttft_target_ms, features.itl_target_ms, features.priority);
        let isl = Some(features.isl_tokens as f64);
        match self {
            Grid::Agg(t) => {
                let r = t.resolve(views, eligible, ttft, itl, prio)?;
                Ok(Choice {
                    pool: r.pool,
                    disagg: None,
                    summary: format!("grid {}", r.text),
                    scores: Vec::new(),
                    fallbacks: t.fallbacks(views, eligible, r.pool),
                })
            }
            Grid::Disagg { prefill, decode } => {
                let p = prefill.resolve(views, eligible, isl, ttft, prio)?;
                let d = decode.resolve(views, eligible, isl, itl, prio)?;
                Ok(Choice {
                    pool: d.pool,
                    disagg: Some((p.pool, d.pool)),
                    summary: format!("grid prefill {} decode {}", p.text, d.text),
                    scores: Vec::new(),
                    fallbacks: decode.fallbacks(views, eligible, d.pool),
                })
            }
        }
    }
}

impl GridConfig {
    /// Validates the grid against `pools` (paths relative to the policy) and resolves names.
    pub(crate) fn compile(&self, pools: &[PoolFacts]) -> Result<Grid, ConfigError> {
        match (&self.agg, &self.prefill, &self.decode) {
            (Some(a), None, None) => a.compile(pools).map(Grid::Agg).map_err(|e| e.under("agg")),
            (None, Some(p), Some(d)) => Ok(Grid::Disagg {
                prefill: p.compile(pools).map_err(|e| e.under("prefill"))?,
                decode: d.compile(pools).map_err(|e| e.under("decode"))?,
            }),
            (Some(_), _, _) => Err(ConfigError::new("agg", "cannot be combined with prefill or decode")),
            (None, Some(_), None) => Err(ConfigError::new("decode", "is required with prefill")),
            (None, None, Some(_)) => Err(ConfigError::new("prefill", "is required with decode")),
            (None, None, None) => Err(ConfigError::new("agg", "is required (or prefill and decode)")),
        }
    }
}

impl AggGrid {
    fn compile(&self, pools: &[PoolFacts]) -> Result<Table, ConfigError> {
        let rows = axis(TTFT, self.ttft_min_ms, self.ttft_max_ms, self.ttft_resolution)?;
        let cols = axis(ITL, self.itl_min_ms, self.itl_max_ms, self.itl_resolution)?;
        let mapping = Mapping { field: "agg_pool_mapping", cells: &self.agg_pool_mapping };
        table("agg", rows, cols, mapping, &self.priority_overrides, pools)
    }
}

impl PrefillGrid {
    fn compile(&self, pools: &[PoolFacts]) -> Result<Table, ConfigError> {
        let rows = axis(ISL, self.isl_min as f64, self.isl_max as f64, self.isl_resolution)?;
        let cols = axis(TTFT, self.ttft_min_ms, self.ttft_max_ms, self.ttft_resolution)?;
        let mapping = Mapping { field: "prefill_pool_mapping", cells: &self.prefill_pool_mapping };
        table("prefill", rows, cols, mapping, &self.priority_overrides, pools)
    }
}

impl DecodeGrid {
    fn compile(&self, pools: &[PoolFacts]) -> Result<Table, ConfigError> {
        let (min, max) = (self.context_length_min as f64, self.context_length_max as f64);
        let rows = axis(CTX, min, max, self.context_length_resolution)?;
        let cols = axis(ITL, self.itl_min_ms, self.itl_max_ms, self.itl_resolution)?;
        let mapping = Mapping { field: "decode_pool_mapping", cells: &self.decode_pool_mapping };
        table("decode", rows, cols, mapping, &self.priority_overrides, pools)
    }
}

/// An axis's label in reasons, its config field prefix and the unit suffix of its bounds
/// (`ttft` + `_ms` → `ttft_min_ms`, `ttft_max_ms`, `ttft_resolution`).
#[derive(Clone, Copy)]
struct AxisName {
    label: &'static str,
    field: &'static str,
    unit: &'static str,
}

const TTFT: AxisName = AxisName { label: "ttft", field: "ttft", unit: "_ms" };
const ITL: AxisName = AxisName { label: "itl", field: "itl", unit: "_ms" };
const ISL: AxisName = AxisName { label: "isl", field: "isl", unit: "" };
const CTX: AxisName = AxisName { label: "ctx", field: "context_length", unit: "" };

/// Checks one axis: finite bounds, `min < max`, `resolution > 0`.
fn axis(name: AxisName, min: f64, max: f64, resolution: u32) -> Result<Axis, ConfigError> {
    let AxisName { label, field, unit } = name;
    if !min.is_finite() {
        return Err(ConfigError::new(format!("{field}_min{unit}"), format!("must be a finite number, got {min}")));
    }
    if !(max.is_finite() && max > min) {
        let msg = format!("must be greater than {field}_min{unit} ({min}), got {max}");
        return Err(ConfigError::new(format!("{field}_max{unit}"), msg));
    }
    if resolution == 0 {
        return Err(ConfigError::new(format!("{field}_resolution"), "must be > 0"));
    }
    Ok(Axis { label, min, max, resolution })
}

/// A mapping as configured, with its field name for errors.
struct Mapping<'a> {
    field: &'static str,
    cells: &'a [Vec<String>],
}

fn table(
    role: &'static str,
    rows: Axis,
    cols: Axis,
    mapping: Mapping<'_>,
    overrides: &[PriorityOverride],
    pools: &[PoolFacts],
) -> Result<Table, ConfigError> {
    let field = mapping.field;
    let lookup = |path: String, name: &str| {
        pools
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| ConfigError::new(path, format!("names unknown pool {name:?}")))
    };
    if mapping.cells.len() != rows.resolution as usize {
        let msg =
            format!("must have {} rows ({} resolution), got {}", rows.resolution, rows.label, mapping.cells.len());
        return Err(ConfigError::new(field, msg));
    }
    let mut cells = Vec::with_capacity(mapping.cells.len());
    for (r, row) in mapping.cells.iter().enumerate() {
        if row.len() != cols.resolution as usize {
            let msg = format!("must have {} entries ({} resolution), got {}", cols.resolution, cols.label, row.len());
            return Err(ConfigError::new(format!("{field}[{r}]"), msg));
        }
        let resolved = row.iter().enumerate().map(|(c, name)| lookup(format!("{field}[{r}][{c}]"), name));
        cells.push(resolved.collect::<Result<Vec<usize>, _>>()?);
    }
    let mut rules = Vec::with_capacity(overrides.len());
    for (k, o) in overrides.iter().enumerate() {
        let at = |f: &str| format!("priority_overrides[{k}].{f}");
        if o.min_priority > o.max_priority {
            let msg = format!("must be >= min_priority ({}), got {}", o.min_priority, o.max_priority);
            return Err(ConfigError::new(at("max_priority"), msg));
        }
        rules.push((o.min_priority, o.max_priority, lookup(at("target_pool"), &o.target_pool)?));
    }
    let mut members: Vec<usize> = cells.iter().flatten().copied().chain(rules.iter().map(|r| r.2)).collect();
    members.sort_unstable();
    members.dedup();
    Ok(Table { rows, cols, cells, overrides: rules, members, role })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{features, probe, Pools};
    use crate::{Policy, SelectConfig, SelectError};

    fn range(min: f64, max: f64, resolution: u32) -> Axis {
        Axis { label: "x", min, max, resolution }
    }

    /// 2×2 aggregated grid over TTFT 0–1000 ms and ITL 0–100 ms: row 0 (tight TTFT) → `fast`,
    /// row 1 → `[fast, slow]`.
    fn agg(overrides: &str) -> Policy {
        let json = format!(
            r#"{{"type": "grid", "agg": {{"ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 2,
                "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 2,
                "agg_pool_mapping": [["fast", "fast"], ["fast", "slow"]],
                "priority_overrides": [{overrides}]}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn disagg() -> Policy {
        serde_json::from_str(
            r#"{"type": "grid",
                "prefill": {"isl_min": 0, "isl_max": 4000, "isl_resolution": 2,
                            "ttft_min_ms": 0, "ttft_max_ms": 1000, "ttft_resolution": 1,
                            "prefill_pool_mapping": [["p_short"], ["p_long"]]},
                "decode": {"context_length_min": 0, "context_length_max": 4000, "context_length_resolution": 1,
                           "itl_min_ms": 0, "itl_max_ms": 100, "itl_resolution": 2,
                           "decode_pool_mapping": [["d_fast", "d_slow"]]}}"#,
        )
        .unwrap()
    }

    fn targets(ttft: Option<f64>, itl: Option<f64>, priority: Option<i64>) -> RequestFeatures {
        RequestFeatures { ttft_target_ms: ttft, itl_target_ms: itl, priority, ..features(None) }
    }

    #[test]
    fn below_min_is_the_first_cell() {
        assert_eq!(range(100.0, 200.0, 4).index(Some(-5.0)), 0);
        assert_eq!(range(100.0, 200.0, 4).index(Some(f64::NEG_INFINITY)), 0);
    }

    #[test]
    fn above_max_is_the_last_cell() {
        assert_eq!(range(0.0, 100.0, 4).index(Some(1e9)), 3);
        assert_eq!(range(0.0, 100.0, 4).index(Some(f64::INFINITY)), 3);
    }

    #[test]
    fn exactly_max_is_the_last_cell() {
        assert_eq!(range(0.0, 100.0, 4).index(Some(100.0)), 3);
    }

    #[test]
    fn cell_edges_belong_to_the_upper_cell() {
        let a = range(0.0, 100.0, 4);
        assert_eq!((a.index(Some(24.999)), a.index(Some(25.0)), a.index(Some(50.0))), (0, 1, 2));
    }

    #[test]
    fn a_missing_or_nan_target_uses_the_middle_of_the_range() {
        assert_eq!(range(0.0, 100.0, 4).index(None), 2);
        assert_eq!(range(0.0, 100.0, 3).index(Some(f64::NAN)), 1);
    }

    #[test]
    fn agg_looks_up_ttft_row_and_itl_column() {
        let pools = Pools::new(&["fast", "slow"]);
        let d = pools.selector(agg(""), 0).decide(&targets(Some(900.0), Some(90.0), None), &pools.states, &[None; 2]);
        let d = d.unwrap();
        assert_eq!(d.pool_name, "slow");
        assert_eq!(d.reason.summary, "grid ttft=1 itl=1 -> slow");
        assert_eq!(d.fallbacks, vec![0]);
    }

    #[test]
    fn agg_with_no_targets_uses_the_middle_cells() {
        let pools = Pools::new(&["fast", "slow"]);
        let d = pools.selector(agg(""), 0).decide(&targets(None, None, None), &pools.states, &[None; 2]).unwrap();
        assert_eq!(d.reason.summary, "grid ttft=1 itl=1 -> slow");
    }

    #[test]
    fn the_first_inclusive_override_wins() {
        let rules = r#"{"min_priority": 5, "max_priority": 10, "target_pool": "fast"},
                       {"min_priority": 10, "max_priority": 20, "target_pool": "slow"}"#;
        let pools = Pools::new(&["fast", "slow"]);
        let mut s = pools.selector(agg(rules), 0);
        let d = s.decide(&targets(Some(900.0), Some(90.0), Some(10)), &pools.states, &[None; 2]).unwrap();
        assert_eq!(d.reason.summary, "grid ttft=1 itl=1 -> slow override=0 -> fast");
        let d = s.decide(&targets(Some(0.0), Some(0.0), Some(20)), &pools.states, &[None; 2]).unwrap();
        assert_eq!(d.pool_name, "slow");
    }

    #[test]
    fn a_priority_outside_every_override_keeps_the_grid_pool() {
        let rules = r#"{"min_priority": 5, "max_priority": 10, "target_pool": "fast"}"#;
        let pools = Pools::new(&["fast", "slow"]);
        let mut s = pools.selector(agg(rules), 0);
        for priority in [Some(4), Some(11), None] {
            let d = s.decide(&targets(Some(900.0), Some(90.0), priority), &pools.states, &[None; 2]).unwrap();
            assert_eq!(d.pool_name, "slow", "{priority:?}");
        }
    }

    #[test]
    fn a_filtered_grid_pool_spills_to_the_next_by_priority_in_the_table() {
        // `other` is not in the grid, so it is never a spill target even at priority 0.
        let pools = Pools::new(&["fast", "slow", "other"]).priority(0, 1).sick(1);
        let d = pools.selector(agg(""), 0).decide(&targets(Some(900.0), Some(90.0), None), &pools.states, &[None; 3]);
        assert_eq!(d.unwrap().reason.summary, "grid ttft=1 itl=1 -> slow spill -> fast skip=slow:unhealthy");
    }

    #[test]
    fn when_no_table_pool_is_eligible_the_error_says_which_are_outside_the_grid() {
        let pools = Pools::new(&["fast", "slow", "other"]).sick(0).sick(1);
        let e = pools.selector(agg(""), 0).decide(&targets(None, None, None), &pools.states, &[None; 3]).unwrap_err();
        let SelectError::NoEligiblePool { removed } = e else { panic!("{e:?}") };
        let by: Vec<(&str, &str)> = removed.iter().map(|r| (r.name.as_str(), r.filter)).collect();
        assert_eq!(by, vec![("fast", "health"), ("slow", "health"), ("other", "grid")]);
    }

    #[test]
    fn disagg_picks_prefill_by_isl_and_decode_by_itl_and_forwards_to_decode() {
        let pools = Pools::new(&["p_short", "p_long", "d_fast", "d_slow"]);
        let f = RequestFeatures { isl_tokens: 3000, ..targets(None, Some(10.0), None) };
        let d = pools.selector(disagg(), 0).decide(&f, &pools.states, &[None; 4]).unwrap();
        let pair = d.disaggregated.as_ref().unwrap();
        assert_eq!((pair.prefill_pool_name.as_str(), pair.decode_pool_name.as_str()), ("p_long", "d_fast"));
        assert_eq!(d.pool, 2);
        assert_eq!(d.reason.summary, "grid prefill isl=1 ttft=0 -> p_long decode ctx=0 itl=0 -> d_fast");
        assert_eq!(d.fallbacks, vec![3]);
    }

    #[test]
    fn disagg_spills_within_each_role() {
        let pools = Pools::new(&["p_short", "p_long", "d_fast", "d_slow"]).sick(0).sick(3);
        let f = RequestFeatures { isl_tokens: 10, ..targets(None, Some(99.0), None) };
        let d = pools.selector(disagg(), 0).decide(&f, &pools.states, &[None; 4]).unwrap();
        let pair = d.disaggregated.unwrap();
        assert_eq!((pair.prefill_pool, pair.decode_pool), (1, 2));
    }

    #[test]
    fn a_saturated_grid_pool_spills_over() {
        let pools = Pools::new(&["fast", "slow"]).limit_prefill(1, 100);
        let busy = probe(0, 500, 0);
        let d = pools.selector(agg(""), 0).decide(&targets(None, None, None), &pools.states, &[None, Some(&busy)]);
        assert_eq!(d.unwrap().pool_name, "fast");
    }

    fn compile_error(policy: &str, pools: &[&str]) -> String {
        let config = SelectConfig { pools: Pools::new(pools).facts, policy: serde_json::from_str(policy).unwrap() };
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_pool_in_the_mapping_is_named_by_its_cell() {
        let e = compile_error(&serde_json::to_string(&agg("")).unwrap(), &["fast"]);
        assert_eq!(e, r#"policy.agg.agg_pool_mapping[1][1] names unknown pool "slow""#);
    }

    #[test]
    fn mapping_shape_must_match_the_resolutions() {
        let policy = r#"{"type": "grid", "agg": {"ttft_min_ms": 0, "ttft_max_ms": 1, "ttft_resolution": 1,
            "itl_min_ms": 0, "itl_max_ms": 1, "itl_resolution": 2, "agg_pool_mapping": [["a"]]}}"#;
        assert_eq!(
            compile_error(policy, &["a"]),
            "policy.agg.agg_pool_mapping[0] must have 2 entries (itl resolution), got 1"
        );
        let policy = policy.replace(r#""ttft_resolution": 1"#, r#""ttft_resolution": 3"#);
        assert_eq!(
            compile_error(&policy, &["a"]),
            "policy.agg.agg_pool_mapping must have 3 rows (ttft resolution), got 1"
        );
    }

    #[test]
    fn axis_and_override_errors_name_the_field() {
        let policy = r#"{"type": "grid", "agg": {"ttft_min_ms": 5, "ttft_max_ms": 5, "ttft_resolution": 1,
            "itl_min_ms": 0, "itl_max_ms": 1, "itl_resolution": 1, "agg_pool_mapping": [["a"]]}}"#;
        assert_eq!(compile_error(policy, &["a"]), "policy.agg.ttft_max_ms must be greater than ttft_min_ms (5), got 5");
        let policy = policy.replace(r#""ttft_max_ms": 5"#, r#""ttft_max_ms": 6"#).replace(
            r#"[["a"]]"#,
            r#"[["a"]], "priority_overrides": [{"min_priority": 2, "max_priority": 1, "target_pool": "a"}]"#,
        );
        assert!(compile_error(&policy, &["a"]).starts_with("policy.agg.priority_overrides[0].max_priority must be >="));
    }

    #[test]
    fn disagg_needs_both_tables_and_excludes_agg() {
        assert_eq!(compile_error(r#"{"type": "grid"}"#, &["a"]), "policy.agg is required (or prefill and decode)");
        let mut half = serde_json::to_value(disagg()).unwrap();
        half.as_object_mut().unwrap().remove("decode");
        assert_eq!(compile_error(&half.to_string(), &["a"]), "policy.decode is required with prefill");
    }

    #[test]
    fn unknown_grid_fields_are_rejected() {
        let bad = r#"{"type": "grid", "agg": {"ttft_min_ms": 0, "ttft_max_ms": 1, "ttft_resolution": 1,
            "itl_min_ms": 0, "itl_max_ms": 1, "itl_resolution": 1, "agg_pool_mapping": [["a"]], "mode": "x"}}"#;
        assert!(serde_json::from_str::<Policy>(bad).is_err());
    }
}
