"""A templated, real-world-shaped test corpus: support conversations of a documentation (RAG) assistant.

``support_conversations(n, seed)`` returns conversations whose user messages look like production logs of
a retrieval-augmented support bot for ML tooling (experiment tracking, sweeps, artifacts, integrations):

* **RAG single turn** — a short question (a full sentence, a few keywords, lower case, with or without a
  question mark) wrapped in one fixed prompt template with two or three retrieved documentation chunks in
  markdown (headings, lists, fenced code, links, tables). Which template is used depends on the seed
  (three shapes: a "User Query: … Retrieved Information :" prefix, a system-prompt-like preamble with the
  question at the end, a "### Context / ### Question" layout).
* **RAG multi-turn** — the same template around the first question and around a follow-up.
* **Support chats** — plain multi-turn chats: a greeting, context, the problem, follow-ups.
* **Code-heavy questions** — a question around a pasted code block and a traceback.

Every conversation's metadata carries its ground-truth ``intent`` (what the user wanted, one of about forty)
and ``shape``, so a clustering can be scored (NMI) against the intent. The text is written for this module
(no copied documentation). Deterministic for a given ``(n, seed)``; ``TEMPLATE_MARKERS`` lists the template
and documentation text no summary or cluster name should repeat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kura_dagster.types import Conversation, Message


@dataclass(frozen=True)
class Intent:
    questions: tuple[str, ...]
    """Ways to ask, with ``{x}`` filled from ``values``; lower-case keyword queries included."""
    values: tuple[str, ...]
    docs: tuple[str, ...]
    """Keys of ``DOCS`` a retriever would return for it (one or two more are drawn at random)."""
    follow_ups: tuple[str, ...]
    code: str = ""
    """A code snippet the user may paste (``{x}`` filled) for the code-heavy shape."""
    error: str = ""


def _i(questions, values, docs, follow_ups, code="", error="") -> Intent:
    return Intent(tuple(questions), tuple(values), tuple(docs), tuple(follow_ups), code, error)


INTENTS: dict[str, Intent] = {
    "log_media": _i(
        ["How do I log {x} to W&B?", "log {x} wandb", "What's the best way to log {x} during training?",
         "Can I log {x} with wandb.log and see them in the dashboard?", "logging {x} in weights and biases"],
        ["images", "audio samples", "videos", "3D point clouds", "matplotlib figures", "HTML files"],
        ["log_media", "track"], ["Can I log them every N steps only?", "Why are they not showing up in the UI?"],
        "import wandb\nrun = wandb.init(project=\"demo\")\nrun.log({{\"sample\": wandb.Image(img)}})", ""),
    "log_tables": _i(
        ["How can I log a {x} as a W&B Table?", "wandb table from {x}", "Is it possible to log a {x} to a table?",
         "What's the fastest way to turn a {x} into a wandb.Table?"],
        ["pandas dataframe", "list of predictions", "CSV file", "confusion matrix", "Hugging Face dataset"],
        ["tables", "log_media"], ["How do I add a column later?", "Can I join two tables in the UI?"],
        "table = wandb.Table(dataframe=df)\nrun.log({{\"preds\": table}})", "ValueError: Table columns must be unique"),
    "sweeps_config": _i(
        ["How do I set up a sweep with {x}?", "sweep config {x}", "What should my sweep.yaml look like for {x}?",
         "Can you show me a W&B Sweeps configuration that uses {x}?"],
        ["bayesian search", "random search", "grid search over learning rates", "early termination with hyperband",
         "nested parameters"],
        ["sweeps", "sweeps_config"], ["How many agents can I run in parallel?", "How do I resume a sweep?"],
        "sweep_config = {{\n    \"method\": \"bayes\",\n    \"metric\": {{\"name\": \"val_loss\", \"goal\": \"minimize\"}},\n}}\nsweep_id = wandb.sweep(sweep_config)",
        "wandb.errors.UsageError: Invalid sweep config"),
    "sweeps_agents": _i(
        ["My sweep agent {x}. What's wrong?", "sweep agent {x}", "Why does wandb agent {x}?",
         "The sweep agent on our cluster {x}, how do I fix it?"],
        ["stops after one run", "hangs without starting runs", "runs the same parameters twice",
         "crashes on SLURM", "ignores my count argument"],
        ["sweeps", "sweeps_agents"], ["Can I run agents on several GPUs?", "Where do agent logs go?"],
        "wandb.agent(sweep_id, function=train, count=20)", "wandb.errors.CommError: sweep not found"),
    "artifacts_version": _i(
        ["How do I version {x} with W&B Artifacts?", "artifact versioning {x}", "What's the right way to track {x} as artifacts?",
         "Can Artifacts keep track of {x} between runs?"],
        ["datasets", "model checkpoints", "preprocessed features", "evaluation results", "tokenizers"],
        ["artifacts"], ["How do I download a specific version?", "Can I add aliases like production?"],
        "artifact = wandb.Artifact(\"mnist\", type=\"dataset\")\nartifact.add_dir(\"data/\")\nrun.log_artifact(artifact)", ""),
    "artifacts_storage": _i(
        ["How can I {x} for my artifacts?", "artifacts storage {x}", "Is there a way to {x} in W&B?",
         "We need to {x} for artifacts, is that supported?"],
        ["delete old versions to free storage", "use references to an S3 bucket", "reduce the storage used",
         "store artifacts in GCS", "clean up unused artifact files"],
        ["artifacts", "storage"], ["Will deleting break lineage?", "Does this cost anything?"]),
    "model_registry": _i(
        ["How do I {x} in the model registry?", "model registry {x}", "What's the workflow to {x} with the W&B Model Registry?"],
        ["link a model version", "promote a model to production", "set up a webhook on a new version",
         "compare two registered models", "add a model card"],
        ["registry", "artifacts"], ["Can I automate this with the API?", "Who can see the registry?"]),
    "reports": _i(
        ["How do I {x} in a W&B report?", "reports {x}", "Can I {x} in Reports?", "is it possible to {x} inside a report"],
        ["embed a panel from another project", "share a report with people outside my team", "export a report to PDF",
         "add LaTeX equations", "compare runs side by side"],
        ["reports"], ["Can viewers edit it?", "Does it update when new runs finish?"]),
    "run_resume": _i(
        ["How do I {x}?", "resume run {x}", "What's the way to {x} in wandb?", "need to {x}"],
        ["resume a crashed run", "continue logging to an existing run", "restart a run from the last checkpoint",
         "resume a run with the same run id"],
        ["runs", "resume"], ["Does the step counter continue?", "What does resume=\"must\" do?"],
        "run = wandb.init(project=\"p\", id=run_id, resume=\"allow\")", "wandb.errors.UsageError: resume='must' but run does not exist"),
    "resume_modes": _i(
        ["What is the difference between {x} in wandb.init resume?", "difference between {x} in wandb",
         "When should I use {x} for resume?"],
        ["allow and auto", "must and never", "allow and must"],
        ["resume", "runs"], ["Which one is the default?", "What happens if the run id is new?"]),
    "offline_mode": _i(
        ["How do I use wandb {x}?", "wandb offline {x}", "Can W&B work {x}?", "I'm on an air-gapped machine, how can I {x}?"],
        ["without internet access", "on a cluster with no network", "and sync later", "to sync offline runs"],
        ["offline", "runs"], ["How do I sync several runs at once?", "Do offline runs keep system metrics?"],
        "import os\nos.environ[\"WANDB_MODE\"] = \"offline\"\nwandb.init()", ""),
    "api_export": _i(
        ["How do I export {x} with the public API?", "export {x} wandb api", "Can I download {x} to a pandas dataframe?",
         "What's the API call to get {x}?"],
        ["run history", "all runs of a project", "summary metrics", "system metrics", "config values of every run"],
        ["api"], ["Is there a rate limit?", "Can I filter runs by tag?"],
        "api = wandb.Api()\nruns = api.runs(\"entity/project\")\nfor run in runs:\n    print(run.history())", "wandb.errors.CommError: Could not find run"),
    "team_permissions": _i(
        ["How do I {x} in my W&B team?", "team {x}", "Can an admin {x}?", "who can {x} in a team project"],
        ["add a new member", "change a member's role", "make a project private", "remove a user",
         "transfer a project to another team"],
        ["teams"], ["Do viewers count as seats?", "Can I use SSO for this?"]),
    "billing": _i(
        ["How does {x} work for W&B?", "billing {x}", "What is the pricing for {x}?", "question about {x}"],
        ["academic licensing", "tracked hours", "storage billing", "the free tier limits", "team seats"],
        ["billing"], ["Where can I see my usage?", "Do you offer discounts for startups?"]),
    "self_hosted": _i(
        ["How do I {x} for a self-hosted W&B server?", "self hosted {x}", "What's needed to {x} on our own infrastructure?",
         "Can we {x} with W&B Server?"],
        ["set up the license", "configure an external MySQL database", "deploy on Kubernetes", "upgrade the server version",
         "configure SSO"],
        ["self_hosted"], ["What are the hardware requirements?", "How do we back it up?"]),
    "pytorch_integration": _i(
        ["How do I track a PyTorch {x} with W&B?", "pytorch {x} wandb", "What's the best way to log a PyTorch {x}?",
         "Can wandb.watch help with my PyTorch {x}?"],
        ["training loop", "model's gradients", "DDP training job", "learning rate scheduler", "custom loss function"],
        ["pytorch", "track"], ["Does wandb.watch slow training down?", "How do I log only on rank 0?"],
        "model = Net()\nwandb.watch(model, log=\"all\", log_freq=100)\nfor batch in loader:\n    loss = step(batch)\n    wandb.log({{\"loss\": loss}})",
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    "lightning_integration": _i(
        ["How do I use the WandbLogger with {x}?", "lightning wandblogger {x}", "WandbLogger in PyTorch Lightning: {x}?"],
        ["model checkpointing", "multiple GPUs", "logging hyperparameters", "custom metrics"],
        ["lightning", "pytorch"], ["Can I log the best checkpoint as an artifact?", "Why do I see two runs?"],
        "from pytorch_lightning.loggers import WandbLogger\nlogger = WandbLogger(project=\"p\", log_model=True)\ntrainer = Trainer(logger=logger)",
        "AttributeError: 'WandbLogger' object has no attribute 'experiment'"),
    "hf_integration": _i(
        ["How do I log a Hugging Face {x} to W&B?", "hugging face {x} wandb", "Can the Trainer report {x} to wandb?",
         "What's the setup for tracking {x} with transformers and W&B?"],
        ["Trainer run", "fine-tuning job", "evaluation metrics", "model checkpoints", "tokenizer and config"],
        ["huggingface", "track"], ["How do I turn it off for one run?", "How do I set the project name?"],
        "args = TrainingArguments(output_dir=\"out\", report_to=\"wandb\", run_name=\"bert-ft\")\ntrainer = Trainer(model=model, args=args)",
        ""),
    "keras_integration": _i(
        ["How do I use W&B with Keras {x}?", "keras {x} wandb callback", "What's the callback for Keras {x}?"],
        ["model.fit", "custom training loops", "TensorFlow 2 models", "image classification"],
        ["keras", "track"], ["Does it log the model graph?", "Can I log validation images too?"],
        "from wandb.integration.keras import WandbMetricsLogger\nmodel.fit(x, y, callbacks=[WandbMetricsLogger()])",
        "ImportError: cannot import name 'WandbCallback'"),
    "langchain_tracing": _i(
        ["How do I trace a LangChain {x} with W&B?", "langchain {x} tracing", "Can Weave trace my LangChain {x}?",
         "What's the way to see LangChain {x} calls in W&B?"],
        ["agent", "retrieval chain", "RAG pipeline", "tool-using agent"],
        ["weave", "langchain"], ["Does it capture token usage?", "Can I trace only some calls?"],
        "import weave\nweave.init(\"my-project\")\nchain = prompt | llm\nchain.invoke({{\"question\": q}})", ""),
    "weave_evaluation": _i(
        ["How do I evaluate {x} with Weave?", "weave evaluation {x}", "Can Weave score {x}?", "set up weave evals for {x}"],
        ["an LLM app", "a RAG pipeline's answers", "prompt versions", "a chatbot against a dataset"],
        ["weave"], ["Can I write my own scorer?", "How do I compare two evaluations?"],
        "evaluation = weave.Evaluation(dataset=examples, scorers=[exact_match])\nasyncio.run(evaluation.evaluate(model))",
        "TypeError: scorer() got an unexpected keyword argument 'output'"),
    "login_auth": _i(
        ["wandb login {x}", "How do I fix wandb login {x}?", "Why does wandb login {x}?", "login problem: {x}"],
        ["fails with an invalid API key", "keeps asking for the key", "not working in a Docker container",
         "hangs behind a proxy"],
        ["login", "environment"], ["Where is the key stored?", "Can I set it with an environment variable?"],
        "", "wandb: ERROR api_key not configured (no-tty). call wandb.login(key=[your_api_key])"),
    "env_variables": _i(
        ["Which environment variable {x}?", "env var {x}", "Is there an environment variable that {x}?"],
        ["sets the project name", "disables wandb", "changes the cache directory", "silences the console output",
         "sets the entity"],
        ["environment"], ["Can I put these in a settings file?", "Do they override wandb.init arguments?"]),
    "sync_errors": _i(
        ["My runs {x}. How do I fix it?", "runs {x}", "Why do my W&B runs {x}?", "help, runs {x}"],
        ["are stuck uploading", "show as crashed even though they finished", "fail to sync with a network error",
         "never finish syncing"],
        ["runs", "offline"], ["Is any data lost?", "How do I retry the upload?"],
        "", "wandb: Network error (ReadTimeout), entering retry loop."),
    "charts_panels": _i(
        ["How do I {x} in the W&B workspace?", "workspace {x}", "Can I {x} in a chart?", "is there a way to {x}"],
        ["plot two metrics on one chart", "smooth noisy curves", "use a log scale on the y axis",
         "group runs by a config value", "make a custom chart with Vega"],
        ["charts"], ["Can I save this as the default view?", "Does it work in reports too?"]),
    "config_hparams": _i(
        ["How do I {x} with wandb.config?", "wandb config {x}", "What's the right way to {x} in wandb.config?"],
        ["log hyperparameters", "update the config after init", "use argparse arguments", "store nested dictionaries"],
        ["config", "track"], ["Can I change it from the UI?", "Does the sweep override it?"],
        "wandb.init(config={{\"lr\": 1e-3, \"batch_size\": 32}})\nlr = wandb.config.lr", "KeyError: 'lr'"),
    "best_practices": _i(
        ["What are W&B best practices for {x}?", "W&B best practices {x}", "best practices for {x} with wandb",
         "any tips for {x} in Weights & Biases?"],
        ["naming runs", "organising projects", "large teams", "tracking many experiments", "logging frequency"],
        ["track", "projects"], ["How do you use tags?", "Should I use groups or job types?"]),
    "group_runs": _i(
        ["How do I group runs {x}?", "group runs {x}", "Can W&B group {x}?"],
        ["from a cross validation", "by experiment", "from distributed training workers", "by job type"],
        ["runs", "charts"], ["Can I collapse the groups in the table?", "Does grouping change the charts?"]),
    "alerts": _i(
        ["How do I {x} with wandb.alert?", "alerts {x}", "Can W&B {x}?"],
        ["send a Slack message when loss explodes", "email me when a run crashes", "notify the team when training finishes"],
        ["alerts"], ["Can I rate limit the alerts?", "Do alerts work for offline runs?"],
        "if loss > threshold:\n    wandb.alert(title=\"Loss too high\", text=f\"loss={{loss}}\")", ""),
    "delete_runs": _i(
        ["How do I {x}?", "how to {x}", "Is it possible to {x} from W&B?"],
        ["delete runs in bulk", "delete a project", "remove a run's logged files", "delete runs from the API"],
        ["api", "projects"], ["Can I undo it?", "Does it free storage straight away?"]),
    "jupyter": _i(
        ["How do I use wandb in {x}?", "wandb {x}", "W&B in {x} doesn't show the run link"],
        ["a Jupyter notebook", "Google Colab", "a Kaggle notebook", "VS Code notebooks"],
        ["notebooks", "login"], ["How do I finish the run in a notebook?", "Can I show the charts inline?"],
        "%env WANDB_NOTEBOOK_NAME=train.ipynb\nimport wandb\nwandb.init()", ""),
    "system_metrics": _i(
        ["How do I see {x} in W&B?", "system metrics {x}", "Does wandb track {x}?"],
        ["GPU utilisation", "memory usage", "CPU temperature", "network traffic", "disk IO"],
        ["system", "track"], ["How often are they sampled?", "Can I turn them off?"]),
    "launch_jobs": _i(
        ["How do I {x} with W&B Launch?", "launch {x}", "Can Launch {x}?"],
        ["queue jobs on Kubernetes", "run a job on SageMaker", "set up a launch agent", "reuse a job with new parameters"],
        ["launch"], ["Which resources are supported?", "How do I pass secrets?"]),
}
"""Intent id -> its phrasings, slot values, related documentation and follow-ups."""

_DOC_LINK = "https://docs.wandb.ai/guides/"

DOCS: dict[str, str] = {
    "track": "## Track Experiments\n### How it works\nTrack a machine learning experiment with a few lines of code:\n"
             "1. Create a run with `wandb.init()`.\n2. Store hyperparameters in `wandb.config`.\n"
             "3. Log metrics over time with `wandb.log()`.\n\n```python\nimport wandb\nrun = wandb.init(project=\"my-project\")\n"
             "run.log({\"loss\": 0.5})\n```\nSee the [quickstart](" + _DOC_LINK + "track) for details.",
    "log_media": "## Log Media & Objects\nW&B supports images, video, audio and more. Rich media is logged with "
                 "`wandb.log` and shown in the workspace.\n- **Images**: `wandb.Image(array_or_path, caption=...)`\n"
                 "- **Audio**: `wandb.Audio(data, sample_rate=...)`\n- **Video**: `wandb.Video(path, fps=4)`\n"
                 "> Note: logging too many images per step slows down the UI.",
    "tables": "## Tables\n### Log a table\nUse `wandb.Table` to log and visualise tabular data.\n\n| argument | type | description |\n"
              "|---|---|---|\n| columns | list | names of the columns |\n| data | list | rows of the table |\n"
              "| dataframe | DataFrame | a pandas dataframe |\n\nTables can hold media such as images and audio.",
    "sweeps": "## Tune Hyperparameters\nUse W&B Sweeps to automate hyperparameter search. A sweep has two parts: a "
              "**controller** that picks parameters and **agents** that run them.\n```bash\nwandb sweep config.yaml\n"
              "wandb agent entity/project/sweep_id\n```\nRead more in the [sweeps guide](" + _DOC_LINK + "sweeps).",
    "sweeps_config": "### Define the sweep configuration\nThe configuration sets the `method` (grid, random or bayes), the "
                     "`metric` to optimise and the `parameters` to search.\n```yaml\nmethod: bayes\nmetric:\n  name: val_loss\n"
                     "  goal: minimize\nparameters:\n  lr:\n    min: 0.0001\n    max: 0.1\n```",
    "sweeps_agents": "### Start sweep agents\nEach agent asks the controller for the next set of parameters. Use "
                     "`count` to limit the runs of one agent. On SLURM, start one agent per job.",
    "artifacts": "## Artifacts\n### Overview\nUse W&B Artifacts to track and version data as the inputs and outputs of "
                 "your runs.\n```python\nartifact = wandb.Artifact(name=\"dataset\", type=\"dataset\")\n"
                 "artifact.add_file(\"data.csv\")\nrun.log_artifact(artifact)\n```\nEach change creates a new version "
                 "(`v0`, `v1`, …) and you can add aliases such as `latest`.",
    "storage": "## Manage storage\nDelete artifact versions you no longer need from the UI or with the API. "
               "Reference artifacts track files in your own bucket (S3, GCS, Azure) without copying them.",
    "registry": "## Model Registry\nThe registry is a central place for the models of your organisation. **Link** a "
                "model artifact version to a registered model, then use aliases like `production` to mark the one in use.",
    "reports": "## Reports\nReports let you organise runs, embed charts and share findings with your team.\n"
               "- Add panels from any project\n- Write notes in markdown and LaTeX\n- Share with a link or export to PDF",
    "runs": "## What are runs?\nA **run** is a single unit of computation logged by W&B. Each run has an id, a name, a "
            "config and a history of logged metrics. Runs can be grouped, tagged and filtered in the workspace.",
    "resume": "### Resume runs\nPass `resume` to `wandb.init` together with the run `id`:\n| value | behaviour |\n"
              "|---|---|\n| `allow` | resume if the id exists, otherwise start a new run |\n| `must` | resume or fail |\n"
              "| `never` | fail if the id exists |\n| `auto` | resume the last crashed run on this machine |",
    "offline": "## Offline mode\nSet `WANDB_MODE=offline` to save runs locally. Later, upload them with:\n"
               "```bash\nwandb sync wandb/offline-run-*\n```",
    "api": "## Public API\nExport data or update existing runs with the public API.\n```python\napi = wandb.Api()\n"
           "run = api.run(\"entity/project/run_id\")\ndf = run.history()\n```\nSee the [API reference](https://docs.wandb.ai/ref/python/public-api).",
    "teams": "## Teams\nUse teams to collaborate in a central workspace. Team admins can invite members, change roles "
             "(admin, member, viewer) and set the visibility of projects.",
    "billing": "## Pricing and usage\nThe free tier includes personal projects. Teams are billed per seat and by "
               "tracked hours; storage above the included amount is billed monthly. Academic licenses are free.",
    "self_hosted": "## W&B Server\n### Deployment options\nRun W&B Server on your own infrastructure with the Helm chart "
                   "or the Terraform modules. You need a **license**, a MySQL 8 database and an object store.",
    "pytorch": "## PyTorch\nCall `wandb.watch(model)` to log gradients and parameters, and `wandb.log` inside your "
               "training loop.\n```python\nwandb.watch(model, log_freq=100)\n```\nWith DDP, only log from rank 0.",
    "lightning": "## PyTorch Lightning\nUse the `WandbLogger` to log metrics, hyperparameters and model checkpoints.\n"
                 "```python\nfrom lightning.pytorch.loggers import WandbLogger\nwandb_logger = WandbLogger(log_model=\"all\")\n```",
    "huggingface": "## Hugging Face Transformers\nSet `report_to=\"wandb\"` in `TrainingArguments` to log metrics from the "
                   "`Trainer`. Set `WANDB_PROJECT` to choose the project and `WANDB_LOG_MODEL` to save checkpoints.",
    "keras": "## Keras\nUse `WandbMetricsLogger` for metrics and `WandbModelCheckpoint` for models.\n"
             "```python\nmodel.fit(X, y, callbacks=[WandbMetricsLogger()])\n```",
    "weave": "## Weave\nWeave traces the calls of your LLM application and evaluates it.\n```python\nimport weave\n"
             "weave.init(\"project\")\n```\n- **Tracing**: every `@weave.op` call is recorded\n- **Evaluations**: score "
             "a model on a dataset with scorers",
    "langchain": "### LangChain\nAfter `weave.init()`, calls made through LangChain are traced automatically, "
                 "including chains, retrievers and tool calls.",
    "login": "## Log in\nRun `wandb login` and paste your API key from the [settings page](https://wandb.ai/authorize). "
             "In scripts, set `WANDB_API_KEY` instead.",
    "environment": "## Environment variables\n| variable | meaning |\n|---|---|\n| `WANDB_API_KEY` | your API key |\n"
                   "| `WANDB_PROJECT` | the project name |\n| `WANDB_MODE` | `online`, `offline` or `disabled` |\n"
                   "| `WANDB_DIR` | where files are written |\n| `WANDB_SILENT` | silence the output |",
    "charts": "## Panels\nThe workspace shows line plots, bar charts and scatter plots. Edit a panel to change the "
              "x axis, smoothing, grouping and the scale of each axis. Custom charts use Vega.",
    "config": "## Configure experiments\nUse `wandb.config` to save hyperparameters and inputs of a run. Pass a "
              "dictionary to `wandb.init(config=...)` or update it later with `wandb.config.update()`.",
    "projects": "## Projects\nA project holds the runs of one piece of work. Use **tags**, **groups** and **job types** "
                "to organise runs inside a project.",
    "alerts": "## Send alerts\nCall `wandb.alert(title, text)` to send a Slack or email notification from your code. "
              "Configure the channels in your user settings.",
    "notebooks": "## Notebooks\nIn Jupyter and Colab, `wandb.init()` shows the run inline. Call `wandb.finish()` at "
                 "the end of the notebook so the run is marked as finished.",
    "system": "## System metrics\nW&B records GPU, CPU, memory, disk and network usage of the machine every few seconds "
              "while a run is active.",
    "launch": "## Launch\nW&B Launch runs jobs on your compute: Kubernetes, SageMaker, Vertex AI or a local Docker "
              "host. A **launch agent** polls a queue and runs the jobs it finds.",
}
"""Markdown documentation chunks a retriever pastes into the prompt (written for this module)."""

TEMPLATES: dict[str, str] = {
    "user_query": "User Query: {question}\n\nRetrieved Information :\n{docs}",
    "system_preamble": ("You are wandbot, a helpful support assistant for Weights & Biases. Answer the question "
                        "using only the documentation below. If the documentation does not contain the answer, "
                        "say that you do not know. Always include code examples when they help.\n\n"
                        "Documentation:\n{docs}\n\nQuestion: {question}\nAnswer:"),
    "context_question": ("### Context\n{docs}\n\n### Instructions\nUse the context above to answer the user's "
                         "question. Cite the sources you used and keep the answer concise.\n\n### Question\n{question}"),
}
"""One template wraps every templated message of a corpus (``template=`` or chosen by the seed)."""

TEMPLATE_MARKERS: tuple[str, ...] = (
    "user query", "retrieved information", "you are wandbot", "documentation:", "answer the question using",
    "### ", "context above", "cite the sources", "question:", "answer:", "instructions", "```", "](", "http",
    "track a machine learning experiment with a few lines", "how it works", "w&b supports images, video",
    "use the context", "documentation below", "**",
)
"""Lower-case snippets of the templates and documentation: a summary or cluster name containing one copied
the template instead of finding the request."""

_GREETINGS = ("Hi! ", "Hello, ", "Hey team, ", "Hi there. ", "Good morning! ", "", "", "")
_CONTEXT = ("I'm training a ResNet on our own images.", "We're a small research team using W&B for our LLM experiments.",
            "I'm new to wandb.", "Our training runs on a SLURM cluster.", "I'm fine-tuning BERT for classification.",
            "We switched from TensorBoard last month.", "I work on a recommendation model in PyTorch.")
_THANKS = ("Thanks!", "Thanks, that worked.", "Great, thank you.", "ok", "Perfect.", "That helps, thanks a lot!")
_ANSWER_OPEN = ("Sure! ", "Great question. ", "Here is how to do it. ", "", "According to the documentation, ")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _vary(question: str, rng: random.Random) -> str:
    """Real users' surface variation: lower case, no final punctuation, a polite prefix."""
    r = rng.random()
    if r < 0.2:
        question = question[:1].lower() + question[1:]
    if rng.random() < 0.25:
        question = question.rstrip("?.")
    if rng.random() < 0.1:
        question = "please help: " + question
    return question


def _docs(intent: Intent, rng: random.Random) -> str:
    keys = list(intent.docs[: rng.choice((1, 2))])
    keys += rng.sample([k for k in sorted(DOCS) if k not in keys], rng.choice((1, 1, 2)))
    rng.shuffle(keys)
    return "\n\n".join(DOCS[k] for k in keys)


def _answer(intent: Intent, x: str, rng: random.Random) -> str:
    doc = DOCS[intent.docs[0]]
    first = doc.split("\n", 2)[-1 if doc.count("\n") < 2 else 1].strip("# ")
    return (f"{rng.choice(_ANSWER_OPEN)}For {x}, here is what the docs say: {first} "
            f"Let me know if you need an example.")


def support_conversations(n: int = 600, seed: int = 0, template: str | None = None,
                          shapes: dict[str, float] | None = None) -> list[Conversation]:
    """``n`` conversations of a RAG support assistant, the same for the same arguments.

    ``template`` names one of ``TEMPLATES`` (default: chosen by ``seed``); ``shapes`` weights the four shapes
    (``rag``, ``rag_multi``, ``chat``, ``code``). Metadata: ``intent`` (ground truth), ``shape``, ``template``.
    """
    rng = random.Random(seed)
    template = template or sorted(TEMPLATES)[seed % len(TEMPLATES)]
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {sorted(TEMPLATES)}")
    wrap = TEMPLATES[template]
    weights = shapes or {"rag": 0.45, "rag_multi": 0.15, "chat": 0.2, "code": 0.2}
    shape_names = sorted(weights)
    names = sorted(INTENTS)
    start = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        name = names[rng.randrange(len(names))]
        intent = INTENTS[name]
        shape = rng.choices(shape_names, [weights[s] for s in shape_names])[0]
        if shape == "code" and not (intent.code or intent.error):
            shape = "chat"
        x = rng.choice(intent.values)
        question = _vary(_cap(rng.choice(intent.questions).format(x=x)), rng)
        user_turns: list[str] = []
        if shape in ("rag", "rag_multi"):
            user_turns.append(wrap.format(question=question, docs=_docs(intent, rng)))
            if shape == "rag_multi":
                follow = rng.choice(intent.follow_ups)
                user_turns.append(wrap.format(question=follow, docs=_docs(intent, rng)))
        elif shape == "chat":
            opener = rng.choice(_GREETINGS)
            if rng.random() < 0.3:  # the request only comes in the second message
                user_turns.append(f"{opener}I have a question about W&B.".strip())
                user_turns.append(f"{rng.choice(_CONTEXT)} {question}")
            else:
                user_turns.append(f"{opener}{rng.choice(_CONTEXT)} {question}".strip())
            user_turns.append(rng.choice(intent.follow_ups))
            if rng.random() < 0.5:
                user_turns.append(rng.choice(_THANKS))
        else:  # code-heavy: the question around pasted code and a traceback
            parts = [f"{rng.choice(_GREETINGS)}{question}".strip()]
            if intent.code:
                parts.append(f"Here is my code:\n```python\n{intent.code.format()}\n```")
            if intent.error:
                parts.append("I get this error:\n```\nTraceback (most recent call last):\n  File \"train.py\", line "
                             f"{rng.randrange(10, 300)}, in <module>\n    main()\n{intent.error}\n```")
            if rng.random() < 0.5:
                parts.append(rng.choice(("Any idea what I'm doing wrong?", "What am I missing?",
                                         "Thanks in advance!", "I'm using wandb 0.16 on Ubuntu.")))
            if rng.random() < 0.3:  # some users paste the template too
                user_turns.append(wrap.format(question="\n\n".join(parts), docs=_docs(intent, rng)))
            else:
                user_turns.append("\n\n".join(parts))
            if rng.random() < 0.5:
                user_turns.append(rng.choice(intent.follow_ups))
        created = start + timedelta(minutes=23 * i + rng.randrange(20))
        messages, at = [], created
        for turn in user_turns:
            messages.append(Message(created_at=at, role="user", content=turn))
            at += timedelta(seconds=5 + rng.randrange(40))
            messages.append(Message(created_at=at, role="assistant", content=_answer(intent, x, rng)))
            at += timedelta(minutes=1 + rng.randrange(5))
        out.append(Conversation(chat_id=f"support-{seed}-{i:05d}", created_at=created, messages=messages,
                                metadata={"source": "kura-dagster-support-demo", "intent": name, "shape": shape,
                                          "template": template}))
    return out
