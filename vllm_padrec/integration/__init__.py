"""Everything that touches vLLM 0.26.0 (Model Runner V2).

    draft_model.py              EaglePadRecForCausalLM: the PAD-Rec draft head as a vLLM model; its
                                compute_logits masks the drafts
    speculator.py               PadRecSpeculator: hands the head the draft step, its drafts and the masks
    decode_loop_graph.py        a round's draft decode steps as one CUDA graph (padrec.decode_loop_graph)
    draft_check.py              draft vs target checks (vocabulary, hidden size, token layout)
    list_settings.py            the server's list settings and catalog; a request's settings checked against them
    request_lists.py            each request's settings row in the engine; a failing request refused alone
    masking_sampler.py          the samplers that mask every logits row before sampling or verifying
    mask_backends.py            the mask implementation: the Triton kernel, else the torch masks
    endpoint.py                 POST /v1/recommendations (an endpoint plugin): the HTTP route
    recommendation_service.py   plans, runs and answers one recommendation request
    prefill_graphs.py           whether the route's prompts prefill in CUDA graphs; the startup warning
    spec_decode_counters.py     vLLM's server-wide speculative-decoding counters, for the answers
    worker_rpc.py               methods on vLLM's worker for collective_rpc (worker_extension_cls): the loop
                                graph's switch and counters, for benchmarks
    log.py                      the plugin's loggers inside vLLM's logging tree
    patches/                    one module per patched vLLM symbol, the version guard, and when each applies:
      init_speculator.py          picks PadRecSpeculator for PAD-Rec drafts (other drafts unchanged)
      init_model_state.py         installs the masks in V2's ModelState hooks
      process_inputs.py           checks every request's list settings in the front end (400, never the engine)
      to_beam_search_params.py    refuses list settings with vLLM's beam search (which would drop them)
      compute_hash.py             puts the draft in vLLM's compile-cache key
      add_cli_args.py             `vllm serve TARGET --speculative-model DRAFT`

Nothing here is imported by ``import vllm_padrec``; ``vllm_padrec.register()`` (called by vLLM in every
process) checks the vLLM version and has each patch applied where vLLM imports its target.
"""
