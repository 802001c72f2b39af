"""flashsale notify: deliver order notifications from the outbox, at least once."""

from __future__ import annotations

import click

from cli.common import emit, json_option, run, settings


@click.command()
@click.option("--log-file", type=click.Path(dir_okay=False, writable=True),
              help="Append each notification as one JSON line to this file.")
@click.option("--webhook", "webhook_url", help="POST each notification as JSON to this URL.")
@click.option("--signing-secret", default=None,
              help="Sign webhook bodies with HMAC-SHA256 (header X-Flashsale-Signature).")
@click.option("--retries", type=click.IntRange(1, 10), default=3, show_default=True,
              help="Webhook attempts per delivery before the event waits for a later pass.")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between polls when nothing is due.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="Events claimed per pass.")
@json_option
def notify(log_file: str | None, webhook_url: str | None, signing_secret: str | None,
           retries: int, once: bool, interval: float, batch: int, as_json: bool) -> None:
    """Deliver notifications (orders: confirmed, shipped, delivered, cancelled, refunded,
    returned; wishlists: price drop, back in stock) from the outbox to a log file or a
    webhook, and mark them delivered.

    Delivery is at least once: receivers deduplicate by event_id. Several of these
    processes may run side by side; each event is claimed by one at a time."""
    if (log_file is None) == (webhook_url is None):
        raise click.UsageError("give exactly one sink: --log-file PATH or --webhook URL")
    report = run(_notify(log_file=log_file, webhook_url=webhook_url,
                         signing_secret=signing_secret, retries=retries, once=once,
                         interval=interval, batch=batch))
    emit(report, as_json, f"delivered: {report['delivered']}, failed: {report['failed']}, "
                          f"still pending: {report['pending']}")


async def _notify(*, log_file: str | None, webhook_url: str | None,
                  signing_secret: str | None, retries: int, once: bool, interval: float,
                  batch: int) -> dict[str, int]:
    import asyncio
    import signal

    from engine.connections import create_pool
    from orders.outbox import Dispatcher, LogFileSink, WebhookSink

    config = settings()
    sink = (LogFileSink(log_file) if log_file is not None else
            WebhookSink(webhook_url, retries=retries, signing_secret=signing_secret))
    pool = await create_pool(config, min_size=1, max_size=2)
    dispatcher = Dispatcher(pool=pool, sink=sink, batch=batch)
    delivered = failed = 0
    try:
        if once:
            while True:
                report = await dispatcher.run_once()
                delivered, failed = delivered + report.delivered, failed + report.failed
                if report.delivered == 0:
                    break
            await sink.close()
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            click.echo(f"delivering notifications to {log_file or webhook_url}", err=True)
            await dispatcher.run(stop, interval=interval)
        return {"delivered": delivered, "failed": failed, "pending": await dispatcher.pending()}
    finally:
        await pool.close()
