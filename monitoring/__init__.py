"""Monitoring: served requests against what the model was trained on.

``tfxops monitor`` (``monitoring.monitor.monitor_once``) closes the loop:

1. ``window``   the request-log files not yet analysed (a checkpoint in
                ``<monitor_dir>/state.json`` makes every request count once, and a
                crashed run resumes the same window), decoded to Arrow columns
                by the ``monitor_engine`` (``engine``: local processes, or a Beam
                job, ``beam_engine``);
2. ``baseline`` for each served model version, through MLMD: PushedModel ->
                its producer -> Model -> Trainer -> Schema, and the Examples'
                training statistics; the Evaluator's metrics; blessed models;
3. ``checks``   TFDV statistics of the window; schema anomalies (SERVING
                environment); skew per feature vs training; drift vs the previous
                window; prediction drift vs the evaluation set; quality on labels
                that came back (``<feedback_dir>/*.csv``: request_id[,row],tips);
4. ``policy``   the settings' trigger policy, cool-down, one action per window;
5. ``act``      a new data span + pipeline rerun, or the re-push of a blessed
                model whose training data matches the window;
6. ``report``   ``<monitor_dir>/reports/<window>.json`` and ``.html``;
7. ``record``   a ``tfxops.Monitor`` execution in MLMD (inputs: PushedModel,
                Model; outputs: statistics, anomalies, report, any re-push).

``<monitor_dir>`` and ``<feedback_dir>`` are ``Settings.monitor_path`` and
``Settings.feedback_path`` (default: ``<home>/monitoring``, ``<home>/feedback``).
"""
