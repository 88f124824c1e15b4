"""``ferrotune bench kernels|prep``: ours against what users run today, from an installed wheel.

Every benchmark prints one table (benchmark, baseline, metric, ours, the baseline's figure, their
ratio and the difference of the outputs) and writes it as ``OUT/<name>.csv`` and
``OUT/<name>.png``. The modules, each named for its job:

``measure``
    how time and peak memory are taken, and how a contender runs in a fresh interpreter
    (``child`` is that interpreter's entry point);
``table``
    the shared output: rows, the printed table, CSV, PNG, the machine line;
``kernel_ops`` / ``kernels``
    the fused LM-head losses and log-probs against HF eager, TRL and Liger-Kernel (``cases``:
    what one case is and what it measured, shared by both);
``prep`` / ``prep_pt`` / ``prep_sft`` / ``prep_dpo``
    data preparation against HF ``tokenizers`` (0.2x and 1.0), ``tiktoken``, ``datasets`` and
    TRL (``bare``: the bare tokenizer engines, a self-contained script that other virtual
    environments' interpreters run; ``envs``: those environments);
``command``
    the ``ferrotune bench`` command line (and ``script_argv``, what the scripts in ``bench/``
    hand to ``ferrotune.cli.main``).

Nothing is imported here, so that ``ferrotune`` starts without torch and
``python -m ferrotune.bench.child`` finds its module unimported.
"""
