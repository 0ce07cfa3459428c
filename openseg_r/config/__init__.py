"""How a model is built and run: :class:`~openseg_r.config.options.ModelOptions` (which
segmenter, which LMM, caches and limits), :class:`~openseg_r.config.settings.Settings`
(per run, recorded in the trace), :class:`~openseg_r.config.settings.LMMOptions` and the
published evaluation protocols (:mod:`openseg_r.config.presets`)."""
