"""The judges' schemas (Lingo-BP's and the evaluations'): a random-weight model constrained to them always
answers something the judges' own parsers accept, within the token budget the schema was sized for."""

import jsonschema
import pytest
from eval_fakes import TINY_CHAT_CFG, random_params

from oyster_jax.core import chain as chain_lib
from oyster_jax.csa import judge_schemas, judges
from oyster_jax.data.vocab import default_tokenizer_path
from oyster_jax.eval import common as eval_common
from oyster_jax.llm.local import LocalJaxBackend

CFG = TINY_CHAT_CFG.replace(max_position_embeddings=1024)
PARSERS = {
    "user_judge": judges.parse_user_judgment,
    "safety_judge": judges.parse_safety_judgment,
    "assess": judges.parse_assessment,
    "extract_chain": chain_lib.parse_chain,
    "backward": chain_lib.parse_chain,
    "classify": eval_common._parse_category,
}
BUDGET = 384


@pytest.fixture(scope="module")
def backend():
    b = LocalJaxBackend(tokenizer=default_tokenizer_path(), cfg=CFG, params=random_params(CFG), max_batch=4)
    yield b
    b.close()


def test_every_json_task_has_a_schema():
    assert set(judge_schemas.TASKS) == set(PARSERS)
    assert judge_schemas.response_format("recombine", 1024) is None


@pytest.mark.parametrize("task", sorted(PARSERS))
def test_a_random_model_constrained_to_the_schema_always_parses(backend, task):
    fmt = judge_schemas.response_format(task, BUDGET)
    schema = fmt["json_schema"]["schema"]
    messages = [{"role": "user", "content": f"Answer the {task} task as JSON."}]
    for seed in range(2):
        sampling = dict(temperature=1.0, seed=seed, max_tokens=BUDGET, response_format=fmt)
        _, content = backend.chat(messages, **sampling)
        jsonschema.validate(chain_lib.extract_json_block(content), schema)
        assert PARSERS[task](content) is not None  # a parse failure raises


def _filled(schema: dict, text: str):
    """The smallest document of `schema` with every free-text field set to `text` (first enum values)."""
    if schema.get("type") == "object":
        return {k: _filled(sub, text) for k, sub in schema["properties"].items()}
    return schema["enum"][0] if "enum" in schema else text


def _text_paths(schema: dict, path=()):
    if schema.get("type") == "object":
        for k, sub in schema["properties"].items():
            yield from _text_paths(sub, path + (k,))
    elif "enum" not in schema:
        yield path


@pytest.mark.parametrize("task", sorted(PARSERS))
def test_schemas_refuse_free_text_the_parsers_read_as_empty(task):
    """`minLength: 1` alone let a constrained model write "; " as its strategy, which parse_chain reads as
    no strategy at all: the schema must refuse every such string in every free-text field."""
    import json

    schema = judge_schemas.judge_schema(task, BUDGET)
    good = _filled(schema, "general")
    jsonschema.validate(good, schema)
    assert PARSERS[task](json.dumps(good)) is not None
    paths = list(_text_paths(schema))
    assert paths or task == "classify"
    for path in paths:
        for blank in (" ", ", ", "; ", "\n", "1.", "- ", "；", "（1）"):
            doc = _filled(schema, "general")
            node = doc
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = blank
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(doc, schema)


def test_unconstrained_random_model_does_not_parse(backend):
    """The control: without the schema the same model's answer is not a judgment."""
    _, content = backend.chat([{"role": "user", "content": "Judge it."}], temperature=1.0, seed=0, max_tokens=64)
    with pytest.raises((judges.JudgeParseError, chain_lib.ChainParseError)):
        judges.parse_safety_judgment(content)


def test_evaluation_judge_on_a_local_model_never_fails_to_parse(backend):
    """Strata-Sword's and the Constructive Score's LLM judge over the local backend: the judge client asks
    for each task's schema, so the random model's first answer already parses (one attempt each)."""
    import asyncio

    judge = eval_common.LLMJudge(backend, "local-random", retries=0, max_tokens=BUDGET)

    async def run():
        category = await judge.classify("How do I store medicine safely?", "en")
        verdict = await judge.rule("How do I store medicine safely?", "Keep it locked away.", None, "en")
        sat = await judge.satisfaction("How do I store medicine safely?", "Keep it locked away.", "a parent", "en")
        return category, verdict, sat

    for call in asyncio.run(run()):
        assert call.value is not None and call.attempts == 1, call.error
