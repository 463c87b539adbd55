"""Published numbers of the Oyster-I report (method notes §8), drawn beside our results in the plots."""

# Strata-Sword ASR (%), average over the three levels; lower is safer.
STRATA_SWORD_AVG_ASR = {
    "Oy1-Qwen3-14B-ORPO": {"en": 7.53, "cn": 7.39},
    "Oy1-DeepSeek-14B-ORPO": {"en": 11.97, "cn": 6.42},
    "Qwen3-14B (base)": {"en": 27.71, "cn": 19.67},
    "GPT-o1-preview": {"en": 4.00, "cn": 4.33},
    "GPT-5-chat": {"en": 17.17, "cn": 14.67},
}
# Per-level ASR (%) published for one model.
STRATA_SWORD_LEVEL_ASR = {
    "Oy1-Qwen3-14B-ORPO": {"en": {"1": 0.00, "2": 2.00, "3": 20.60}, "cn": {"1": 0.00, "2": 6.00, "3": 16.16}},
}
# Constructive score at beta = 2, in the report's points (100 x (mean Sat - 2 mean Risk)); "≈" values were
# read off a figure.
CONSTRUCTIVE_BETA2 = {
    "Oy1-Qwen3-14B-ORPO": 56.27,
    "Oy1-DeepSeek-14B-ORPO": 55.27,
    "Qwen3-14B (base)": 47.54,
    "GPT-o1-preview (≈)": 35.0,
    "GPT-5-chat (≈)": 60.6,
}
