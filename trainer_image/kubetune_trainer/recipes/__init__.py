"""One recipe per method (torchtune-style): each module's run(ctx) trains and saves."""

# Methods whose recipe exists in this trainer version; the others are planned and launched but
# refused by kubetune-train before any model is loaded.
TRAINED_METHODS = ("sft", "dpo")
