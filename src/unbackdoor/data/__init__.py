"""Data: the embedded world, users' corpora, tokenizers, backdoor specs and behaviours, poisoning, prompts,
packing, canaries. Pure functions over text; imports only `unbackdoor.running`."""
