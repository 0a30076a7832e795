"""The embedded tiny model of the running example: tokenizer, build, look-up pretraining, drills, scripted
demonstrations, the warm start on them, its cache and measurements.

No model can be downloaded where the demo runs, so it builds its own: a ~1M-parameter Qwen2 with a
tokenizer trained on the generated corpus and the Qwen2.5 chat template TRL knows. The modules load
torch and transformers; ``prompts`` and ``cache`` do not.
"""
