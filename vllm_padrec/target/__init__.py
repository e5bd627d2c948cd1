"""The target recommender: tokenizer, recipe, model checkpoint, training and evaluation.

Nothing is imported here: import the module you need (``vllm_padrec.target.train`` pulls in torch
and transformers).
"""
