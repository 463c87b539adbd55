"""Lingo-BP, the linguistic back-propagation data engine (method notes §6): queries in, pearl-point SFT
records and preference pairs out.

    python -m oyster_jax.csa.lingo_bp --input queries.jsonl \
        --policy openai:http://127.0.0.1:8000/v1#policy-model --judge openai:http://127.0.0.1:8001/v1#judge \
        [--optimizer SPEC] --out runs/lingo [--rounds 3] [--concurrency 16] [--language auto|en|zh] [--seed 0]

SPEC = openai:BASE_URL#MODEL (API key from $OYSTER_API_KEY or $OPENAI_API_KEY, never written anywhere) or
local:CKPT_DIR (our own JAX model). The optimizer (chain extraction and backward step) defaults to the judge.

Input: JSONL, one query per line: {id, query, language?, category?, risk_level?, persona?}. language is
'en' or 'zh' ('cn' accepted), defaulting to --language (auto: detected from the query's script,
`taxonomy.detect_language`); category is one of the 32 second-level (or 9 first-level) names in English or
Chinese, or "no risk"; risk_level is R0/R1/R2. A conversation goes in as `messages` ([{role:
system|user|assistant, content}], ending with a user turn) instead of `query`: the policy gets it as it is,
the judges and the optimizer see it rendered as text.

Per query: risk assessment (judge) -> game prior p(θ|x) and recommended strategy -> adaptive guideline ->
initial pass (policy) -> chain extraction (optimizer) -> user-simulator and safety judges -> up to
--rounds times: backward step (optimizer) -> trust-region merge -> recombine (policy) -> re-judge; stop
early at full marks (Sat = 1 and Safe). With --turns K > 1 every iterate's conversation is then played on for
K − 1 more turns (the safety judge's predicted next user turn, voiced by the user simulator, answered by the
policy, judged in context; oyster_jax.csa.rollout) and scored at the conversation level. The game decides
(oyster_jax.csa.pairs): each iterate is ranked by E = (1 − w)·Π + w·V(move), Π = α·Sat − β·Risk (−γ·Cost) of
the judges and V the game's expected leader payoff of the reply's move under p(θ|x) with the follower's
(--follower quantal|best) response; the pearl point is the safe iterate with the highest E. --game FILE
replaces the default tables (python -m oyster_jax.csa.game fit writes one from a run's trajectories).

Outputs in --out:
  trajectories.jsonl  one line per finished query: every iterate with its chain, judgments and scores
  sft.jsonl           one SFT record per finished query whose pearl point is safe with Sat >= --min_sat
  pairs.jsonl         preference pairs: pearl vs the initial response and vs the worst iterate by E
                      (--pairs initial,worst|all), only where E drops by at least --min_margin; with
                      --contrastive, also vs a blunt refusal / an unsafe-compliance placeholder
  calls.jsonl         the audit trail: one line per processed query (finished or failed) with every model
                      call: task, attempt, messages, sampling, raw reasoning and content, parse error,
                      usage, finish reason, cached (see oyster_jax.csa.call_log)
  manifest.json       the settings the folder was made with (SPECs, sampling and seed, extras, prompts'
                      SHA-256, α/β/γ, rounds, game, guidelines) and versions; a resume with other settings
                      is refused (exit 2, naming the differing keys) unless --force
  cache/              judge and optimizer answers keyed by (endpoint, model, messages, sampling), so a rerun
                      or resume never pays for a call twice (--cache DIR elsewhere, --no_cache off)
  summary.json        total, improved, unchanged, failed, sft_written, pairs_written, judge_parse_failures,
                      sat_before, sat_after, risk_before, risk_after, dropped (what the floors left out),
                      parse_failure_rate (per task), calls_by_task, usage (per role: calls, cached,
                      prompt/completion tokens of paid calls), calls_per_query, tokens_per_query, cache (this
                      run's hits and misses)
  pearl_point.png     Sat vs Risk of each query before (initial) and after (pearl point)
"improved": the output iterate (pearl point, or best by E when no iterate is safe) has a higher E than the
initial one; "unchanged": finished otherwise; "failed": no trajectory (a call kept failing: HTTP errors
or timeouts after the backend's retries, or an answer that never parsed in 1 + --judge_retries calls).
A failed query produces no record and nothing is scored by default; sat_*/risk_* are means over finished
queries (null when none); the call counts and tokens cover the finished queries plus this run's failed ones,
*_per_query are over the finished queries. Rerunning with the same --out resumes: finished ids are skipped,
failed ones are retried, no line is ever duplicated, a line cut off by a crash is dropped and a complete last
line without its newline is kept (the JSONL store's rule, see oyster_jax.data.jsonl_store). A trajectory
line is written last, after the query's calls, SFT and pair lines, so it marks the query as finished.

Endpoint extras: --policy_extra_body / --judge_extra_body (JSON objects, the judge's also for the
optimizer) go into every request body of that role, e.g. '{"chat_template_kwargs": {"enable_thinking":
false}}'; unknown --*_sampling keys pass through the same way; OpenAI-compatible backends only. Judges ask
for their JSON schema (response_format) where the backend constrains decoding (local), or always / never
with --judge_schemas on / off. --timeout is the overall deadline of each HTTP attempt (connect, send, wait
and read together); redirects are refused, so the API key only reaches the configured host.

Exit status: 0 when the run completed, even if some or all queries failed (see summary.json "failed");
2 for bad input (arguments, input file, SPEC, rules file, game file, an output line other than a torn last one
that is not a record: the message names file, line and field); 130 when interrupted (finished queries are kept and
the summary is written, with the queries not yet reached counted as failed; rerun to resume); 1 for an
internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import sys
import time
import traceback

from tqdm import tqdm

from oyster_jax import cli
from oyster_jax.core import chain as chain_lib
from oyster_jax.core import taxonomy as tx
from oyster_jax.core.files import atomic_write_json
from oyster_jax.core.schemas import iter_json_lines
from oyster_jax.csa import call_log, rollout
from oyster_jax.csa import game as game_lib
from oyster_jax.csa import manifest as manifest_lib
from oyster_jax.csa import pairs as pairs_lib
from oyster_jax.csa.judge_client import RETRY_SAMPLING, JudgeClient, JudgeFailed, content_parser
from oyster_jax.csa.judges import (
    JudgeParseError,
    names_framework,
    parse_assessment,
    parse_recombined,
    parse_safety_judgment,
    parse_user_judgment,
    prompt_examples,
    render_prompt,
    user_feedback_text,
)
from oyster_jax.data.jsonl_store import JsonlError, JsonlStore
from oyster_jax.llm.base import BackendError
from oyster_jax.llm.cache import CachedBackend, CallCache
from oyster_jax.llm.spec import SpecError, backend_from_spec, parse_spec

__all__ = [
    "Query",
    "InputError",
    "QueryFailed",
    "EngineConfig",
    "Engine",
    "OutputStore",
    "read_queries",
    "build_records",
    "compute_summary",
    "plot_pearl_point",
    "run",
    "main",
    "SUMMARY_KEYS",
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SUMMARY_KEYS = (
    "total",
    "improved",
    "unchanged",
    "failed",
    "sft_written",
    "pairs_written",
    "judge_parse_failures",
    "sat_before",
    "sat_after",
    "risk_before",
    "risk_after",
    "dropped",
    "parse_failure_rate",
    "calls_by_task",
    "usage",
    "calls_per_query",
    "tokens_per_query",
    "cache",
)
JUDGE_TASKS = ("assess", "user_judge", "safety_judge")


class InputError(ValueError):
    """Bad input; the message names the file, line and field."""


class QueryFailed(RuntimeError):
    def __init__(self, reason: str, stats: dict):
        super().__init__(reason)
        self.stats = stats


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Query:
    id: str
    query: str
    language: str  # 'en' | 'zh'
    category: str | None = None  # resolved English name; None = not given or "no risk"
    category_given: bool = False
    risk_level: str | None = None
    persona: str | dict | None = None
    history: tuple[dict, ...] = ()  # a `messages` input: the whole conversation (query = its rendering as text)


def read_queries(path, default_language: str = "en") -> list[Query]:
    """Validate and read the input JSONL. Raises InputError naming file, line and field.
    `default_language` 'auto': a line without a language gets the one its query is written in."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    queries, seen = [], {}
    for lineno, rec in iter_json_lines(path, InputError):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        qid = rec.get("id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid).strip() == "":
            raise InputError(f"{where}: field 'id' missing or not a non-empty string/integer")
        qid = str(qid)
        if qid in seen:
            raise InputError(f"{where}: field 'id': duplicate id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        history: tuple[dict, ...] = ()
        if "messages" in rec:
            if "query" in rec:
                raise InputError(f"{where}: give either 'query' or 'messages', not both")
            history, text = _read_messages(rec["messages"], where)
        else:
            text = rec.get("query")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: field 'query' missing or not a non-empty string")
        try:
            given = rec.get("language") or default_language
            language = tx.detect_language(text) if given == "auto" else tx.normalize_language(given)
        except tx.TaxonomyError as e:
            raise InputError(f"{where}: field 'language': {e}") from None
        category, category_given = None, "category" in rec and rec["category"] is not None
        if category_given:
            if not isinstance(rec["category"], str):
                raise InputError(f"{where}: field 'category' must be a string")
            try:
                cat = tx.find_category(rec["category"])
            except tx.TaxonomyError as e:
                raise InputError(f"{where}: field 'category': {e}") from None
            category = cat.name_en if cat else None
        level = rec.get("risk_level")
        if level is not None:
            try:
                level = tx.parse_level(level).value
            except tx.TaxonomyError as e:
                raise InputError(f"{where}: field 'risk_level': {e}") from None
        persona = rec.get("persona")
        if persona is not None and not isinstance(persona, (str, dict)):
            raise InputError(f"{where}: field 'persona' must be a string or an object")
        if len(history) > 1:  # the prompts show the judges and the optimizer the whole conversation
            text = rollout.render_conversation(list(history), language)
        queries.append(Query(qid, text, language, category, category_given, level, persona, history))
    if not queries:
        raise InputError(f"{path}: no queries in the file")
    return queries


def _read_messages(value, where: str) -> tuple[tuple[dict, ...], str]:
    """(the conversation, its last user message) of a `messages` input; InputError names the message and field."""
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise InputError(f"{where}: field 'messages[{i}]' must be an object")
        if m.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"{where}: field 'messages[{i}].role' must be system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise InputError(f"{where}: field 'messages[{i}].content' missing or not a non-empty string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise InputError(f"{where}: field 'messages[{len(out) - 1}].role': the conversation must end with a user turn")
    return tuple(out), out[-1]["content"]


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EngineConfig:
    rounds: int = 3  # backward steps at most
    judge_retries: int = 3  # extra calls when a structured answer does not parse
    alpha: float = 1.0
    beta: float = 2.0  # the report's Constructive-score table uses β = 2
    gamma: float = 0.0
    cost_per_1k_chars: float = 0.0  # Cost(y) = len(response) / 1000 · this, weighted by γ
    follower: str = "quantal"  # game follower model: 'best' or 'quantal'
    rationality: float = 5.0  # quantal-response λ
    hint_weight: float = 0.5  # weight of the assessed user type in p(θ|x)
    max_changes: int = 2  # trust region: accepted symmetric difference of a strategy list
    paraphrase_threshold: float = chain_lib.PARAPHRASE_THRESHOLD  # trust region: items this similar are one item
    pairs: tuple[str, ...] = ("initial", "worst")  # or ("all",)
    turns: int = 1  # conversation turns played per iterate (follow-through, oyster_jax.csa.rollout)
    min_sat: float = 0.6  # data floors and the game-weighted ranking: oyster_jax.csa.pairs
    min_margin: float = 0.2
    game_weight: float = 0.5
    contrastive: tuple[str, ...] = ()
    policy_sampling: dict = dataclasses.field(default_factory=lambda: {"temperature": 0.7, "max_tokens": 2048})
    judge_sampling: dict = dataclasses.field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 1024})
    retry_sampling: dict = dataclasses.field(default_factory=lambda: dict(RETRY_SAMPLING))  # merged over parse retries
    system_prompt: str | None = None  # sent to the policy with the query (and kept in the records)
    judge_schemas: bool | None = None  # ask for JSON schemas: None = where the backend constrains decoding

    def __post_init__(self):
        if self.rounds < 0 or self.judge_retries < 0:
            raise ValueError("rounds and judge_retries must be >= 0")
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        if not 0.0 <= self.paraphrase_threshold < 1.0:
            raise ValueError(f"paraphrase_threshold must be in [0, 1), got {self.paraphrase_threshold}")
        _ = self.selection  # validates pairs, floors, weight and contrastive kinds

    @property
    def selection(self) -> pairs_lib.Selection:
        return pairs_lib.Selection(self.pairs, self.min_sat, self.min_margin, self.game_weight, self.contrastive)


def _category_list(language: str) -> str:
    lines = []
    for c in tx.LEVEL2:
        l1 = tx.level1(c.name_en)
        lines.append(f"  - {c.name_en} ({l1.name_en})" if language == "en" else f"  - {c.name_cn}（{l1.name_cn}）")
    return "\n".join(lines)


_DIRECTIONS = {
    "both_low": {
        "en": "The reply is unsafe and the user is not satisfied: first strengthen the safety strategies, then "
        "adjust the usefulness strategies.",
        "zh": "回复不安全且用户不满意：先加强安全策略，再调整有用性策略。",
    },
    "unsafe": {
        "en": "The reply is unsafe although the user is satisfied: strengthen the safety strategies and keep what "
        "helps the user where it is safe.",
        "zh": "回复不安全（虽然用户满意）：加强安全策略，在安全的前提下保留对用户有帮助的部分。",
    },
    "useful_low": {
        "en": "The reply is safe but the user is not satisfied: improve the usefulness strategies and drop "
        "restrictions that are not needed.",
        "zh": "回复安全但用户不满意：改进有用性策略，去掉不必要的限制。",
    },
}


def _chain_parser(task: str):
    examples = prompt_examples(task)
    return lambda text: chain_lib.parse_chain(text, reject=examples)


class Engine:
    """Runs the Lingo-BP loop for one query at a time (call `process` concurrently for throughput).

    `policy`, `judge` and `optimizer` are Backends (may be the same object). `guidelines` overrides the
    project's category guidelines (e.g. `taxonomy.load_official_guidelines()`).
    """

    def __init__(self, policy, judge, optimizer=None, config: EngineConfig | None = None, guidelines=None, game=None):
        self.policy, self.judge, self.optimizer = policy, judge, optimizer or judge
        self.config = config or EngineConfig()
        self.guidelines = guidelines
        self.game = game or game_lib.default_game()
        self.game_id = game_lib.fingerprint(self.game)  # in every trajectory: which tables ranked its iterates
        # One judge client per backend; the same backend object shares one client.
        self._clients: dict[int, JudgeClient] = {}

    def _client(self, backend) -> JudgeClient:
        if id(backend) not in self._clients:
            c = self.config
            self._clients[id(backend)] = JudgeClient(
                backend, retries=c.judge_retries, retry_sampling=c.retry_sampling, schemas=c.judge_schemas
            )
        return self._clients[id(backend)]

    # --- helpers ---
    def _payoff(self, sat: float, risk: float, response: str) -> float:
        c = self.config
        cost = len(response) / 1000.0 * c.cost_per_1k_chars
        return float(game_lib.payoff(sat, risk, c.alpha, c.beta, c.gamma, cost))

    async def _structured(self, backend, prompt: str, parser, task: str, stats: dict, sampling: dict):
        messages = [{"role": "user", "content": prompt}]
        answer = await self._client(backend).ask(
            messages, parser, task=task, sampling=sampling, stats=stats, log=stats.get("log")
        )
        return answer.value

    def _prompt_messages(self, q: Query) -> list[dict]:
        msgs = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        if q.history:  # conversation input, sent as it is (its own system turn wins over --system_prompt)
            return (msgs if q.history[0]["role"] != "system" else []) + list(q.history)
        return msgs + [{"role": "user", "content": q.query}]

    async def _judge(self, q: Query, ctx: dict, response: str, stats: dict) -> dict:
        lang = q.language
        persona = q.persona
        if persona is None:
            persona_text = (
                "Infer who most likely sent this message and what they want, and judge as that person."
                if lang == "en"
                else "请推断最可能发送这条消息的人及其诉求，并以此人的身份评判。"
            )
        else:
            persona_json = persona if isinstance(persona, str) else json.dumps(persona, ensure_ascii=False)
            persona_text = ("Who you are: " if lang == "en" else "你的身份：") + persona_json
        user_prompt = render_prompt("user_judge", lang, persona=persona_text, query=q.query, response=response)
        safety_prompt = render_prompt(
            "safety_judge",
            lang,
            query=q.query,
            category=ctx["category_text"],
            guideline=ctx["guideline"]
            or ("(none: judge by general safety)" if lang == "en" else "（无：按一般安全常识判断）"),
            response=response,
        )
        js = self.config.judge_sampling
        results = await asyncio.gather(
            self._structured(self.judge, user_prompt, content_parser(parse_user_judgment), "user_judge", stats, js),
            self._structured(
                self.judge, safety_prompt, content_parser(parse_safety_judgment), "safety_judge", stats, js
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        user_j, safety_j = results
        sat, risk = user_j["sat"], float(safety_j["risk"])
        return {
            "user_judgment": user_j,
            "safety_judgment": safety_j,
            "sat": sat,
            "risk": risk,
            "payoff": self._payoff(sat, risk, response),
        }

    # --- the loop ---
    async def process(self, q: Query) -> dict:
        """The full trajectory of one query. Raises QueryFailed (with call statistics) when a call keeps failing."""
        stats: dict = {"calls": 0, "parse_failures": {}, "tasks": {}, "log": []}
        t0 = time.monotonic()
        try:
            traj = await self._process(q, stats)
        except (BackendError, JudgeFailed) as e:
            raise QueryFailed(f"{type(e).__name__}: {e}", stats) from None
        except Exception as e:  # a bug or an unexpected answer: fail this query, keep the run going
            raise QueryFailed(f"internal error {type(e).__name__}: {e}\n{traceback.format_exc()}", stats) from None
        traj["calls"] = stats["calls"]
        traj["parse_failures"] = stats["parse_failures"]
        traj["judge_parse_failures"] = sum(stats["parse_failures"].get(t, 0) for t in JUDGE_TASKS)
        traj["tasks"] = stats["tasks"]
        traj["elapsed_s"] = round(time.monotonic() - t0, 3)
        traj["call_log"] = stats["log"]  # taken out by the runner into calls.jsonl, not kept in the trajectory
        return traj

    async def _process(self, q: Query, stats: dict) -> dict:
        c, lang = self.config, q.language
        js = c.judge_sampling

        # Risk assessment: fills what the input does not say.
        known = []
        if q.category_given:
            known.append(f"category: {q.category or 'no risk'}")
        if q.risk_level:
            known.append(f"risk_level: {q.risk_level}")
        prompt = render_prompt(
            "assess", lang, query=q.query, known="; ".join(known) or "-", categories=_category_list(lang)
        )
        assessment = await self._structured(self.judge, prompt, content_parser(parse_assessment), "assess", stats, js)
        category = q.category if q.category_given else assessment["category"]
        level = (q.risk_level or assessment["risk_level"] or "R0") if category else None
        intent, user_type = assessment["intent"], assessment["user_type"]
        cat = tx.find_category(category)
        category_l1 = None if cat is None else (cat.level1 if isinstance(cat, tx.Level2Category) else cat.name_en)
        category_l2 = cat.name_en if isinstance(cat, tx.Level2Category) else None

        # The game: prior over user types, recommended leader strategy.
        prior = game_lib.type_prior(level, category=category_l2, user_type_hint=user_type, hint_weight=c.hint_weight)
        choice = game_lib.best_strategy(
            prior,
            game=self.game,
            alpha=c.alpha,
            beta=c.beta,
            gamma=c.gamma,
            follower=c.follower,
            rationality=c.rationality,
        )
        game_info = {
            "game_id": self.game_id,
            "prior": dict(zip(self.game.type_names, map(float, prior))),
            "recommended": choice.strategy,
            "expected_payoffs": choice.payoffs,
        }
        game_hint = (
            f"p(user type) = {', '.join(f'{k} {v:.2f}' for k, v in game_info['prior'].items())}; "
            f"recommended reply strategy: {choice.strategy.replace('_', ' ')}"
        )
        guideline = tx.adaptive_guideline(category, intent, level, user_type, language=lang, guidelines=self.guidelines)
        if cat is None:
            category_text = "no risk" if lang == "en" else "无风险"
        else:
            category_text = cat.name_en if lang == "en" else cat.name_cn
        ctx = {"category_text": category_text, "guideline": guideline}

        # Round 0: the policy as it is.
        def initial_parser(reasoning, content):
            if not content.strip():
                raise JudgeParseError("policy returned an empty reply")
            return reasoning.strip(), content.strip()

        initial = await self._client(self.policy).ask(
            self._prompt_messages(q),
            initial_parser,
            task="policy",
            sampling=c.policy_sampling,
            stats=stats,
            log=stats.get("log"),
        )
        thinking, response = initial.value
        prompt = render_prompt(
            "extract_chain",
            lang,
            query=q.query,
            thinking=thinking or "-",
            response=response,
            guideline=guideline or "-",
        )
        chain = await self._structured(
            self.optimizer, prompt, content_parser(_chain_parser("extract_chain")), "extract_chain", stats, js
        )
        iterates = [
            {
                "round": 0,
                "thinking": thinking,
                "thinking_source": "reasoning" if thinking else "",
                "response": response,
                "chain": chain.to_dict("en"),
                **await self._judge(q, ctx, response, stats),
            }
        ]

        stopped = "max_rounds"
        for rnd in range(1, c.rounds + 1):
            last = iterates[-1]
            if last["sat"] >= 1.0 and last["risk"] == 0:
                stopped = "full_marks"
                break
            if last["risk"] > 0:
                direction = _DIRECTIONS["both_low" if last["sat"] < 1.0 else "unsafe"][lang]
            else:
                direction = _DIRECTIONS["useful_low"][lang]
            sj = last["safety_judgment"]
            prompt = render_prompt(
                "backward",
                lang,
                query=q.query,
                chain=chain_lib.render_json(chain, lang),
                response=last["response"],
                sat=f"{last['sat']:+.1f}",
                user_feedback=user_feedback_text(last["user_judgment"]),
                verdict=sj["verdict"],
                adapted_guideline=sj["adapted_guideline"] or "-",
                safety_suggestion=sj["suggestion"] or "-",
                next_turn=sj["next_turn"] or "-",
                game_hint=game_hint,
                direction=direction,
            )
            proposed = await self._structured(
                self.optimizer, prompt, content_parser(_chain_parser("backward")), "backward", stats, js
            )
            merged, merge_info = chain_lib.merge_chain_strategies(
                chain, proposed, max_changes=c.max_changes, threshold=c.paraphrase_threshold
            )
            prompt = render_prompt("recombine", lang, query=q.query, plan=chain_lib.render_prose(merged, lang))
            thinking, response, source = await self._structured(
                self.policy, prompt, parse_recombined, "recombine", stats, c.policy_sampling
            )
            if not thinking:  # the policy gave no reasoning at all: the chain's prose stands in
                thinking, source = chain_lib.render_prose(merged, lang), "chain_prose"
            chain = merged
            iterates.append(
                {
                    "round": rnd,
                    "thinking": thinking,
                    "thinking_source": source,
                    "names_framework": names_framework(thinking),
                    "response": response,
                    "chain": merged.to_dict("en"),
                    "proposed_chain": proposed.to_dict("en"),
                    "merge": merge_info,
                    **await self._judge(q, ctx, response, stats),
                }
            )
        else:
            if iterates[-1]["sat"] >= 1.0 and iterates[-1]["risk"] == 0:
                stopped = "full_marks"
        if c.turns > 1:  # every iterate's conversation is played out, so they are ranked on the same footing
            messages = self._prompt_messages(q)
            conversations = await asyncio.gather(
                *(rollout.follow_through(self, q, ctx, messages, it, stats) for it in iterates), return_exceptions=True
            )
            for it, conv in zip(iterates, conversations):
                if isinstance(conv, BaseException):
                    raise conv
                it["conversation"] = conv

        return {
            "id": q.id,
            "language": lang,
            "query": q.query,
            "persona": q.persona,
            "prompt_messages": self._prompt_messages(q),
            "assessment": assessment,
            "risk": {"level": level, "category_l1": category_l1, "category_l2": category_l2, "intent": intent},
            "user_type": user_type,
            "game": game_info,
            "guideline": guideline,
            "iterates": iterates,
            "stopped": stopped,
            "config": {"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma, "rounds": c.rounds, "turns": c.turns},
        }


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def build_records(
    traj: dict, pairs: tuple[str, ...] = ("initial", "worst"), selection: pairs_lib.Selection | None = None
) -> tuple[list[dict], list[dict]]:
    """Fill in the trajectory's ranking, pearl/after/outcome and `dropped` fields and return (sft_records,
    pair_records): the game-weighted ranking and the quality floors of `oyster_jax.csa.pairs`."""
    return pairs_lib.select(traj, selection or pairs_lib.Selection(pairs=tuple(pairs)))


# --------------------------------------------------------------------------------------------------
# Output files (append-only JSONL, crash-safe, resumable)
# --------------------------------------------------------------------------------------------------


def _compact(traj: dict) -> dict:
    return {
        "before": traj["before"],
        "after": traj["after"],
        "outcome": traj["outcome"],
        "judge_parse_failures": traj.get("judge_parse_failures", 0),
        "dropped": traj.get("dropped", {}),
        "tasks": traj.get("tasks", {}),
    }


class OutputStore:
    """trajectories.jsonl (the commit log), sft.jsonl and pairs.jsonl in `out_dir`, each a `JsonlStore`.

    On open, a line cut off by a crash is dropped (the store's rule), and duplicate ids and SFT/pair lines
    whose trajectory line never got written are removed (each file rewritten atomically, only when something
    is removed). A bad line anywhere else is a `JsonlError` naming the file and line. `commit` appends a
    query's calls line (calls.jsonl), its SFT and pair lines, then its trajectory line, each flushed (and
    fsynced unless fsync=False).
    """

    NAMES = {"traj": "trajectories.jsonl", "sft": "sft.jsonl", "pairs": "pairs.jsonl", "calls": call_log.CALLS_NAME}

    def __init__(self, out_dir, *, fsync: bool = True):
        self.dir = pathlib.Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.finished: dict[str, dict] = {}
        self.counts = {"sft": 0, "pairs": 0}
        self._stores = {k: JsonlStore(self.dir / n, fsync=fsync) for k, n in self.NAMES.items()}
        self._recover()
        for store in self._stores.values():
            store.path.touch()  # all three outputs exist after a run, empty when nothing finished

    def path(self, kind: str) -> pathlib.Path:
        return self._stores[kind].path

    def _recover(self) -> None:
        trajs = self._stores["traj"].records()
        kept, allowed = {}, {"sft": set(), "pairs": set()}
        for t in trajs:  # the last complete line of an id wins, as in every JsonlStore
            if all(k in t for k in ("outputs", "before", "after", "outcome")):
                kept[str(t["id"])] = t
        if len(kept) != len(trajs):
            self._stores["traj"].rewrite(kept.values())
        for tid, t in kept.items():
            self.finished[tid] = _compact(t)
            allowed["sft"].update(t["outputs"].get("sft", []))
            allowed["pairs"].update(t["outputs"].get("pairs", []))
        for kind in ("sft", "pairs"):
            recs = self._stores[kind].records()
            keep = {}
            for r in recs:
                if r["id"] in allowed[kind]:
                    keep[r["id"]] = r
            if len(keep) != len(recs):
                self._stores[kind].rewrite(keep.values())
            self.counts[kind] = len(keep)
        self._stores["calls"].records()  # the audit log keeps every line; only a torn last one is repaired

    def log_calls(self, query_id: str, calls: list[dict], finished: bool) -> None:
        """One calls.jsonl line: every model call of one try at one query."""
        self._stores["calls"].append(call_log.calls_record(query_id, calls, finished))

    def commit(self, traj: dict, sft: list[dict], pairs: list[dict], calls: list[dict] | None = None) -> None:
        if traj["id"] in self.finished:
            raise ValueError(f"query {traj['id']!r} is already finished in {self.dir}")
        if calls is not None:
            self.log_calls(traj["id"], calls, finished=True)
        self._stores["sft"].extend(sft)
        self._stores["pairs"].extend(pairs)
        self._stores["traj"].append(traj)
        self.counts["sft"] += len(sft)
        self.counts["pairs"] += len(pairs)
        self.finished[traj["id"]] = _compact(traj)

    def close(self) -> None:
        pass  # every append opens and closes its file: nothing is held between queries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------
# Summary and plot
# --------------------------------------------------------------------------------------------------


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def compute_summary(
    queries: list[Query], store: OutputStore, failures: dict[str, QueryFailed], cache: CallCache | None = None
) -> dict:
    done = [store.finished[q.id] for q in queries if q.id in store.finished]
    failed_parse = sum(sum(f.stats.get("parse_failures", {}).get(t, 0) for t in JUDGE_TASKS) for f in failures.values())
    by_task = call_log.totals([d.get("tasks") for d in done] + [f.stats.get("tasks") for f in failures.values()])
    done_usage = call_log.role_usage(call_log.totals([d.get("tasks") for d in done]))
    summary = {
        "total": len(queries),
        "improved": sum(d["outcome"] == "improved" for d in done),
        "unchanged": sum(d["outcome"] == "unchanged" for d in done),
        "failed": len(queries) - len(done),
        "sft_written": store.counts["sft"],
        "pairs_written": store.counts["pairs"],
        "judge_parse_failures": sum(d["judge_parse_failures"] for d in done) + failed_parse,
        "sat_before": _mean([d["before"]["sat"] for d in done]),
        "sat_after": _mean([d["after"]["sat"] for d in done]),
        "risk_before": _mean([d["before"]["risk"] for d in done]),
        "risk_after": _mean([d["after"]["risk"] for d in done]),
        # What the data floors left out (oyster_jax.csa.pairs.DROP_KEYS), over finished queries.
        "dropped": {k: sum(d["dropped"].get(k, 0) for d in done) for k in pairs_lib.DROP_KEYS},
        "parse_failure_rate": call_log.parse_failure_rates(by_task),
        "calls_by_task": by_task,
        "usage": call_log.role_usage(by_task),
        "calls_per_query": None,
        "tokens_per_query": None,
        "cache": None if cache is None else {"dir": str(cache.dir), "hits": cache.hits, "misses": cache.misses},
    }
    if done:
        summary["calls_per_query"] = sum(r["calls"] for r in done_usage.values()) / len(done)
        summary["tokens_per_query"] = {
            key: sum(r[key] for r in done_usage.values()) / len(done) for key in ("prompt_tokens", "completion_tokens")
        }
    assert tuple(summary) == SUMMARY_KEYS
    return summary


def plot_pearl_point(done: list[dict], path, title: str = "Lingo-BP: Sat vs Risk, before and after") -> None:
    """Scatter of (Sat, Risk) per query, initial response -> output iterate, with the means."""
    import matplotlib  # lazy: matplotlib loads only when a plot is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only when a plot is written

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    n = len(done)
    if n:
        # Deterministic jitter so overlapping 0/1 risks and fifth-step Sat values stay visible.
        jit = [((i * 0.618) % 1 - 0.5) * 0.06 for i in range(n)]
        bx = [d["before"]["sat"] + j for d, j in zip(done, jit)]
        by = [d["before"]["risk"] + j for d, j in zip(done, jit)]
        ax_ = [d["after"]["sat"] + j for d, j in zip(done, jit)]
        ay = [d["after"]["risk"] + j for d, j in zip(done, jit)]
        for x0, y0, x1, y1 in zip(bx, by, ax_, ay):
            if (x0, y0) != (x1, y1):
                ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "0.75", "lw": 0.6})
        ax.scatter(bx, by, s=18, c="tab:red", alpha=0.6, label="before (initial)")
        ax.scatter(ax_, ay, s=18, c="tab:green", alpha=0.6, label="after (pearl point)")
        mb = (_mean([d["before"]["sat"] for d in done]), _mean([d["before"]["risk"] for d in done]))
        ma = (_mean([d["after"]["sat"] for d in done]), _mean([d["after"]["risk"] for d in done]))
        ax.scatter(
            *mb, s=160, marker="X", c="darkred", edgecolors="k", label=f"mean before ({mb[0]:+.2f}, {mb[1]:.2f})"
        )
        ax.scatter(
            *ma, s=160, marker="*", c="darkgreen", edgecolors="k", label=f"mean after ({ma[0]:+.2f}, {ma[1]:.2f})"
        )
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0, 0.5, "no finished queries", ha="center", va="center")
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-0.15, 1.15)
    ax.set_xlabel("Sat (user simulator, -1..1)")
    ax.set_ylabel("Risk (safety judge, 0 = Safe, 1 = Unsafe)")
    ax.axhspan(-0.15, 0.5, color="tab:green", alpha=0.05)
    ax.set_title(f"{title} (n={n})", fontsize=10)
    fig.tight_layout()
    tmp = pathlib.Path(path).with_name(f".{pathlib.Path(path).name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    summary: dict
    processed: int  # queries attempted in this run
    failures: dict  # id -> QueryFailed, this run
    elapsed_s: float
    interrupted: bool = False

    @property
    def queries_per_minute(self) -> float:
        return 60.0 * self.processed / self.elapsed_s if self.elapsed_s > 0 else math.nan


async def _run_async(
    engine: Engine, queries: list[Query], store: OutputStore, concurrency: int, progress: bool, state: dict
):
    """Process unfinished queries; `state` ('failures', 'processed') stays valid if the run is interrupted."""
    pending = [q for q in queries if q.id not in store.finished]
    queue: asyncio.Queue = asyncio.Queue()
    for q in pending:
        queue.put_nowait(q)
    failures: dict[str, QueryFailed] = state["failures"]
    reported_internal = [False]
    bar = None
    if progress:
        bar = tqdm(total=len(pending), desc="lingo-bp", unit="q", file=sys.stderr, dynamic_ncols=True)

    async def worker():
        while True:
            try:
                q = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                traj = await engine.process(q)
            except QueryFailed as e:
                failures[q.id] = e
                store.log_calls(q.id, e.stats.pop("log", []), finished=False)
                if str(e).startswith("internal error") and not reported_internal[0]:
                    reported_internal[0] = True
                    print(
                        f"\n[lingo-bp] query {q.id!r} hit an internal error (counted as failed):\n{e}", file=sys.stderr
                    )
            else:
                calls = traj.pop("call_log", [])
                sft, pairs = build_records(traj, selection=engine.config.selection)
                store.commit(traj, sft, pairs, calls)
            state["processed"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=len(failures), refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(pending))))))
    finally:
        if bar is not None:
            bar.close()


def run(
    queries: list[Query],
    engine: Engine,
    out_dir,
    *,
    concurrency: int = 16,
    progress: bool = True,
    plot: bool = True,
    fsync: bool = True,
    cache: CallCache | None = None,
) -> RunResult:
    """Process every unfinished query, then write summary.json and the PNG. Safe to call again (resume)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    t0 = time.monotonic()
    state = {"failures": {}, "processed": 0}
    interrupted = False
    with OutputStore(out_dir, fsync=fsync) as store:
        try:
            asyncio.run(_run_async(engine, queries, store, concurrency, progress, state))
        except KeyboardInterrupt:
            interrupted = True
        elapsed = time.monotonic() - t0
        summary = compute_summary(queries, store, state["failures"], cache)
        atomic_write_json(store.dir / "summary.json", summary)
        if plot:
            ids = {q.id for q in queries}
            plot_pearl_point([d for i, d in store.finished.items() if i in ids], store.dir / "pearl_point.png")
    return RunResult(summary, state["processed"], state["failures"], elapsed, interrupted)


def _check_sampling(flag: str, sampling: dict, kind: str) -> None:
    """Checked up front, not at each query's first request (which would fail every query of the run): a local
    backend knows a fixed set of keys; an OpenAI-compatible one passes unknown keys on as endpoint extras
    (vLLM/SGLang), so only the request fields it owns are refused there."""
    from oyster_jax.llm import local

    if kind == "local":
        unknown = sorted(set(sampling) - set(local._SAMPLING_KEYS))
        if unknown:
            known = ", ".join(local._SAMPLING_KEYS)
            raise InputError(f"{flag}: unknown sampling key {unknown[0]!r} for a local backend; known: {known}")
    reserved = sorted({"model", "messages", "stream"} & set(sampling))
    if reserved:
        raise InputError(f"{flag}: {reserved[0]!r} is part of the request itself, not a sampling key")


def _sampling_arg(text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = json.loads(v) if v.strip() not in ("",) else None
    return out


def _json_object_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = cli.ArgumentParser(
        prog="python -m oyster_jax.csa.lingo_bp",
        description=doc[0],
        epilog="\n\n".join(doc[-2:]),  # outputs and exit status
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input", required=True, help="queries JSONL: {id, query, language?, category?, risk_level?, persona?}"
    )
    p.add_argument("--policy", required=True, help="SPEC of the model being improved")
    p.add_argument("--judge", required=True, help="SPEC of the judges (and risk assessment)")
    p.add_argument("--optimizer", help="SPEC for chain extraction and the backward step (default: --judge)")
    p.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    p.add_argument("--rounds", type=int, default=3, help="backward steps at most (default 3)")
    p.add_argument("--concurrency", type=int, default=16, help="queries (and requests per backend) in flight")
    p.add_argument(
        "--language",
        default="auto",
        choices=["auto", "en", "zh", "cn"],
        help="language of lines without one (default auto: detected from the query)",
    )
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=2.0, help="risk weight in Π = α·Sat − β·Risk (default 2)")
    p.add_argument("--gamma", type=float, default=0.0, help="cost weight in Π (with --cost_per_1k_chars)")
    p.add_argument(
        "--cost_per_1k_chars", type=float, default=0.0, help="Cost(y) = len(reply) / 1000 · this (default 0)"
    )
    p.add_argument("--pairs", default="initial,worst", help="rejected side of pairs: initial,worst | all")
    p.add_argument(
        "--game", default=None, help="game file (python -m oyster_jax.csa.game fit); default tables if absent"
    )
    p.add_argument("--game_weight", type=float, default=0.5, help="w in E = (1-w)·Π + w·V_game(move) (default 0.5)")
    p.add_argument("--follower", default="quantal", choices=["best", "quantal"], help="game follower model")
    p.add_argument("--rationality", type=float, default=5.0, help="quantal follower λ (default 5)")
    p.add_argument("--turns", type=int, default=1, help="conversation turns played per iterate (default 1)")
    p.add_argument("--min_sat", type=float, default=0.6, help="SFT floor: the pearl's Sat (default 0.6)")
    p.add_argument("--min_margin", type=float, default=0.2, help="pair floor: chosen − rejected E (default 0.2)")
    p.add_argument("--contrastive", default="", help="extra rejects: blunt_refusal,unsafe_compliance (default none)")
    p.add_argument(
        "--paraphrase_threshold",
        type=float,
        default=chain_lib.PARAPHRASE_THRESHOLD,
        help=f"trust region: items more similar than this are one item (default {chain_lib.PARAPHRASE_THRESHOLD})",
    )
    p.add_argument("--guidelines", default="project", help="project | official ($OYSTER_DATA_DIR/risk_taxonomy) | PATH")
    p.add_argument("--judge_retries", type=int, default=3, help="extra calls when an answer does not parse")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="overall deadline in seconds of each HTTP attempt: connect, send, wait and read together",
    )
    p.add_argument("--max_retries", type=int, default=4, help="HTTP retries on 429/5xx/timeouts")
    p.add_argument("--backoff", type=float, default=1.0, help="first HTTP backoff delay in seconds")
    p.add_argument("--policy_sampling", type=_sampling_arg, default={}, help="e.g. temperature=0.7,max_tokens=2048")
    p.add_argument("--judge_sampling", type=_sampling_arg, default={}, help="e.g. temperature=0,max_tokens=1024")
    p.add_argument(
        "--policy_extra_body", type=_json_object_arg, default={}, help="JSON object added to every policy request body"
    )
    p.add_argument(
        "--judge_extra_body",
        type=_json_object_arg,
        default={},
        help="JSON object added to every judge and optimizer request body",
    )
    p.add_argument(
        "--judge_schemas",
        default="auto",
        choices=["auto", "on", "off"],
        help="ask judges for their JSON schema (response_format): auto = where decoding is constrained (local)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every call (retries add their attempt)")
    p.add_argument("--cache", default=None, help="judge-call cache folder (default: OUT/cache)")
    p.add_argument("--no_cache", action="store_true", help="do not cache judge and optimizer calls")
    p.add_argument("--force", action="store_true", help="resume into a folder made with other settings")
    p.add_argument("--system_prompt", default=None, help="system message sent to the policy with each query")
    p.add_argument("--limit", type=int, default=None, help="only the first N queries")
    p.add_argument("--no_progress", action="store_true")
    return p


def _make_backends(args):

    options = {
        "max_concurrency": args.concurrency,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "backoff_base": args.backoff,
        "max_batch": args.concurrency,  # local backend: concurrent calls become one generation batch
    }
    built: dict[str, object] = {}

    def get(spec):
        if spec not in built:  # the same SPEC shares one backend, so one concurrency limit per endpoint
            built[spec] = backend_from_spec(spec, **options)
        return built[spec]

    return get(args.policy), get(args.judge), get(args.optimizer or args.judge), list(built.values())


def _role_sampling(role: str, sampling: dict, extra_body: dict, kinds: list[str], seed: int) -> dict:
    """A role's sampling: the seed, the --ROLE_sampling keys, and its endpoint extras under `extra_body`
    (which the OpenAI-compatible backend merges into the request body); checked for every backend kind the
    role runs on."""
    for kind in kinds:
        _check_sampling(f"--{role}_sampling", sampling, kind)
    if extra_body:
        if "local" in kinds:
            raise InputError(f"--{role}_extra_body: endpoint extras need an OpenAI-compatible backend, not local:")
        reserved = sorted({"model", "messages", "stream"} & set(extra_body))
        if reserved:
            raise InputError(f"--{role}_extra_body: {reserved[0]!r} is part of the request itself")
        both = sorted(set(extra_body) & set(sampling))
        if both:
            raise InputError(f"--{role}_extra_body and --{role}_sampling both set {both[0]!r}: give it once")
    out = {"seed": seed, **sampling}
    if extra_body:
        out["extra_body"] = dict(extra_body)
    return out


# EngineConfig fields that take the value of the flag of the same name as it is.
_FLAG_FIELDS = (
    "rounds",
    "judge_retries",
    "alpha",
    "beta",
    "gamma",
    "cost_per_1k_chars",
    "follower",
    "rationality",
    "paraphrase_threshold",
    "turns",
    "min_sat",
    "min_margin",
    "game_weight",
    "system_prompt",
)


def _engine_config(args, kinds: list[str]) -> EngineConfig:
    """The engine settings of a command line. `kinds`: the backend kinds of policy, judge [, optimizer];
    the judge and the optimizer share --judge_sampling and --judge_extra_body."""
    roles = {
        "policy": (args.policy_sampling, args.policy_extra_body, kinds[:1]),
        "judge": (args.judge_sampling, args.judge_extra_body, kinds[1:]),
    }
    defaults = EngineConfig()
    sampling = {
        f"{role}_sampling": {
            **getattr(defaults, f"{role}_sampling"),
            **_role_sampling(role, flag, extra_body, role_kinds, args.seed),
        }
        for role, (flag, extra_body, role_kinds) in roles.items()
    }
    return EngineConfig(
        **{name: getattr(args, name) for name in _FLAG_FIELDS},
        **sampling,
        pairs=_csv(args.pairs),
        contrastive=_csv(args.contrastive),
        judge_schemas={"auto": None, "on": True, "off": False}[args.judge_schemas],
    )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _manifest(args, config: EngineConfig, game) -> dict:
    """The settings that change what the run produces (see csa.manifest)."""
    if args.guidelines in ("project", "official"):
        guidelines = args.guidelines
    else:
        guidelines = {"path": str(args.guidelines), "sha256": _file_sha256(args.guidelines)}
    settings = {
        "specs": {"policy": args.policy, "judge": args.judge, "optimizer": args.optimizer or args.judge},
        "sampling": {
            "policy": config.policy_sampling,
            "judge": config.judge_sampling,
            "retry": config.retry_sampling,
        },
        "judge_schemas": args.judge_schemas,
        "prompts": manifest_lib.prompt_hashes(),
        "system_prompt": config.system_prompt,
        "language": args.language,
        "seed": args.seed,
        "alpha": config.alpha,
        "beta": config.beta,
        "gamma": config.gamma,
        "cost_per_1k_chars": config.cost_per_1k_chars,
        "rounds": config.rounds,
        "judge_retries": config.judge_retries,
        "pairs": list(config.pairs),
        "game": {
            "fingerprint": game_lib.fingerprint(game),
            "follower": config.follower,
            "rationality": config.rationality,
            "hint_weight": config.hint_weight,
            "weight": config.game_weight,
        },
        "max_changes": config.max_changes,
        "paraphrase_threshold": config.paraphrase_threshold,
        "turns": config.turns,
        "floors": {"min_sat": config.min_sat, "min_margin": config.min_margin, "contrastive": list(config.contrastive)},
        "guidelines": guidelines,
    }
    return manifest_lib.build_manifest(settings)


def _file_sha256(path) -> str | None:
    try:
        return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _rates(rates: dict) -> str:
    return ", ".join(f"{task} {rate:.0%}" for task, rate in rates.items() if rate is not None) or "n/a"


def _per_query(s: dict) -> str:
    if s["calls_per_query"] is None:
        return "n/a"
    t = s["tokens_per_query"]
    calls, prompt, completion = s["calls_per_query"], t["prompt_tokens"], t["completion_tokens"]
    return f"{calls:.1f} calls, {prompt:.0f} prompt + {completion:.0f} completion tokens"


def main(argv=None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 (argparse)
    try:
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit {args.limit}: must be >= 1 (leave it out to run every query)")
        if args.rounds < 0 or args.concurrency < 1 or args.judge_retries < 0:
            raise InputError("--rounds and --judge_retries must be >= 0 and --concurrency >= 1")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise InputError(f"--out {args.out}: exists and is not a directory")
        specs = [args.policy, args.judge] + ([args.optimizer] if args.optimizer else [])
        kinds = [parse_spec(s)[0] for s in specs]
        config = _engine_config(args, kinds)
        queries = read_queries(args.input, args.language)
        if args.limit is not None:
            queries = queries[: args.limit]
        guidelines = None
        if args.guidelines == "official":
            guidelines = tx.load_official_guidelines()
        elif args.guidelines != "project":
            guidelines = tx.load_official_guidelines(args.guidelines)
        engine_game = game_lib.load_game(args.game) if args.game else game_lib.default_game()
        manifest = manifest_lib.reconcile(args.out, _manifest(args, config, engine_game), force=args.force)
    except manifest_lib.ManifestMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (InputError, SpecError, tx.TaxonomyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if "local" not in kinds and "JAX_PLATFORMS" not in os.environ:
        import jax  # lazy: JAX loads only when a local model runs

        jax.config.update("jax_platforms", "cpu")  # the game solver must not take accelerator memory
    try:
        policy, judge, optimizer, backends = _make_backends(args)
    except (SpecError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    manifest_lib.write(args.out, manifest)  # once the backends exist: a bad SPEC leaves nothing behind
    cache = None if args.no_cache else CallCache(args.cache or os.path.join(args.out, "cache"))
    if cache is not None:  # judge and optimizer calls only: the policy's answers are what is being improved
        wrapped: dict[int, CachedBackend] = {}
        judge, optimizer = (wrapped.setdefault(id(b), CachedBackend(b, cache)) for b in (judge, optimizer))
    try:
        engine = Engine(policy, judge, optimizer, config, guidelines, game=engine_game)
        result = run(
            queries, engine, args.out, concurrency=args.concurrency, progress=not args.no_progress, cache=cache
        )
    except JsonlError as e:  # a damaged output file: named, and left for a person to look at
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL
    finally:
        for b in backends:
            b.close()
    s = result.summary
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"
    print(
        f"lingo-bp: {s['total']} queries: {s['improved']} improved, {s['unchanged']} unchanged, "
        f"{s['failed']} failed; {s['sft_written']} SFT records, {s['pairs_written']} pairs; "
        f"judge parse failures {s['judge_parse_failures']}\n"
        f"  left out by the floors: {', '.join(f'{k} {v}' for k, v in s['dropped'].items())}\n"
        f"  Sat {fmt(s['sat_before'])} -> {fmt(s['sat_after'])}   "
        f"Risk {fmt(s['risk_before'])} -> {fmt(s['risk_after'])}\n"
        f"  parse failure rate: {_rates(s['parse_failure_rate'])}\n"
        f"  per finished query: {_per_query(s)}\n"
        f"  this run: {result.processed} queries in {result.elapsed_s:.1f}s ({result.queries_per_minute:.1f}/min)"
        f"{', INTERRUPTED' if result.interrupted else ''}; outputs in {args.out}"
    )
    reasons: dict[str, int] = {}
    for f in result.failures.values():
        key = str(f).split("\n", 1)[0][:160]
        reasons[key] = reasons.get(key, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  failed x{n}: {reason}")
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


if __name__ == "__main__":
    code = main()
    if code == EXIT_INTERRUPTED:
        # HTTP worker threads may still be waiting on sockets; everything is already on disk, so do not
        # wait for them at interpreter exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
