"""The chat format our tokenizers speak: special-token names and the ChatML template (torch-free).

The data stage trains tokenizers with these tokens at fixed ids and writes the template into them; the model's HF
export writes it into every folder whose tokenizer has none. Both import it from here (the model is the leaf).
"""

from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"  # id 0: bos, eos, pad and the document separator in the shards
IM_START = "<|im_start|>"  # id 1
IM_END = "<|im_end|>"  # id 2
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
