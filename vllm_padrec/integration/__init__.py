"""Everything that touches vLLM 0.26.0 (Model Runner V2).

    draft_model.py              EaglePadRecForCausalLM: the PAD-Rec draft head as a vLLM model
    speculator.py               PadRecSpeculator: feeds the draft-step index to the head, masks drafts
    patch_init_speculator.py    picks PadRecSpeculator for PAD-Rec drafts (other drafts unchanged)
    draft_check.py              draft vs target checks (vocabulary, hidden size, token layout)
    cli_flag.py                 `vllm serve TARGET --speculative-model DRAFT`
    verification_mask.py        catalog masks on verification and draft logits (tensors in, mask out)
    list_settings.py            the server's list settings and catalog; a request's settings checked against them
    request_lists.py            each request's settings row, and the samplers that mask (failures contained)
    patch_init_model_state.py   installs the masks in V2's ModelState hooks
    patch_process_inputs.py     checks every request's list settings in the front end (400, never the engine)
    patch_to_beam_search_params.py  refuses list settings with vLLM's beam search (which would drop them)
    patch_speculative_hash.py   puts the draft in vLLM's compile-cache key
    endpoint.py                 POST /v1/recommendations (an endpoint plugin)

Nothing here is imported by ``import vllm_padrec``; ``vllm_padrec.register()`` applies the patches
(idempotently) when vLLM loads the plugin, in every vLLM process.
"""
