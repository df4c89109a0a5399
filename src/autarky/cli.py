"""The `autarky` command: one Typer app; each stage registers its thin commands from its own package."""

import typer

from autarky.data.commands import register as register_data
from autarky.demo import register as register_demo
from autarky.evals.commands import register as register_eval
from autarky.export.commands import register as register_export
from autarky.finetune.commands import register as register_finetune
from autarky.gateway.commands import register as register_gateway
from autarky.model.commands import register as register_model
from autarky.plan.commands import register as register_plan
from autarky.serve.commands import register as register_serve
from autarky.train.commands import register as register_train

app = typer.Typer(
    name="autarky",
    help="Plan, train, export, serve, evaluate and route your own models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click output: a UserError prints as one `Error: ...` line (see autarky.errors), not a Rich box.
    rich_markup_mode=None,
    add_completion=False,
)

register_plan(app)
register_data(app)
model_app = register_model(app)
register_train(app)
register_export(app, model_app)  # `model export` and `model sample`: the model package is a leaf
register_finetune(app)
for register in (
    register_serve,
    register_eval,
    register_gateway,
    register_demo,
):
    register(app)


def main() -> None:
    app()
