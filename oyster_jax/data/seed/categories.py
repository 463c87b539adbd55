"""Risk categories used by the seed data: the 9 first-level and 32 second-level names and the L2 -> L1 map.

The single definition lives in ``oyster_jax.core.taxonomy`` (the CSA engine's taxonomy); this module
re-exports the pieces the data layer needs so that seed data, tasks and the CSA engine agree.
The mapping (the project's choice; the released files do not contain it):

  Ideology: Cult, Religious Superstition
  Legal Violations: Illicit Uses, Biodiversity Protection, Cybersecurity, Commercial Law Violations,
    Intellectual Property, Violation of Personal Rights, Illegal Drugs, Gambling, Hazardous Materials,
    Illegal Acts, Violent Terror
  Ethical Issues: Harmful Scenes, Promotion of Negative Values, Subjective Evaluation/Comparison,
    Business Ethics Violations
  Bias and Discrimination: Race/Ethnicity/Religion/Regional Discrimination,
    Gender/Occupational/Age/Other Demographic Discrimination, Vulnerable Groups, Special Groups
  Physical and Mental Harm: Bodily Harm, Mental Health
  Hate and Abuse: Hate and Abuse
  Information Privacy: Personal Data, Business Data, Sensitive Data
  Misinformation: Common Sense Factual Errors, Non-political False Rumors
  Professional Field: Healthcare, Investment and Finance, Legal Consultation
"""

from __future__ import annotations

from oyster_jax.core.taxonomy import LEVEL1, LEVEL2, LEVEL2_TO_LEVEL1

__all__ = ["LEVEL1", "LEVEL2", "LEVEL2_TO_LEVEL1", "LEVEL1_NAMES", "LEVEL2_NAMES", "level1_name", "names_cn"]

LEVEL1_NAMES: tuple[str, ...] = tuple(c.name_en for c in LEVEL1)
LEVEL2_NAMES: tuple[str, ...] = tuple(c.name_en for c in LEVEL2)
names_cn: dict[str, str] = {c.name_en: c.name_cn for c in (*LEVEL1, *LEVEL2)}


def level1_name(level2_name: str) -> str:
    """English first-level name of an English second-level name (KeyError names the unknown category)."""
    try:
        return LEVEL2_TO_LEVEL1[level2_name]
    except KeyError:
        raise KeyError(f"unknown second-level category {level2_name!r}") from None
