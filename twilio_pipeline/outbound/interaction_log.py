"""The guide's Interaction log: its exact wording, in chronological order, kept for metadata.

Users who know the RPI connector grep their logs for these lines, so the text follows the guide
word for word (`Action: <channel> Activity: <text>`); our own extra lines use the same prefix.
"""

from __future__ import annotations

from twilio_pipeline.logs import Log


class InteractionLog:
    """Writes `Action: <channel> Activity: ...` lines to `log` and remembers them in order."""

    def __init__(self, log: Log, channel_name: str):
        self._log = log
        self.channel_name = channel_name
        self.lines: list[str] = []

    def _line(self, text: str) -> str:
        return f"Action: {self.channel_name} Activity: {text}"

    def info(self, text: str) -> None:
        line = self._line(text)
        self.lines.append(line)
        self._log.info(line)

    def warning(self, text: str) -> None:
        line = self._line(text)
        self.lines.append(line)
        self._log.warning(line)

    def text(self) -> str:
        return "\n".join(self.lines)

    def _bare(self, text: str) -> None:
        """The guide's lifecycle lines carry no `Action: ... Activity:` prefix."""
        self.lines.append(text)
        self._log.info(text)

    # --- the guide's lifecycle lines around the action's own ----------------------------------------
    def starting(self) -> None:
        """Before the first Activity line (the outbound run's first step)."""
        for text in ("Preparing to execute", "Fulfillment Action preparing to start",
                     "Completing Fulfillment Action execution", "Preparing to run any actions",
                     f"Starting action {self.channel_name}"):
            self._bare(text)

    def finishing(self) -> None:
        """After the counts lines (the outbound run's last step)."""
        for text in ("Tidying up Fulfillment Action", "Generating any Fulfillment Action reports",
                     "Fulfillment Action complete"):
            self._bare(text)

    # --- the guide's lines, in the guide's order --------------------------------------------------
    def deduplicating(self) -> None:
        self.info("Deduplicating on contact key")

    def counts_before_after(self, before: int, duplicates: int) -> None:
        self.info(f"Count before deduplication: {before}")
        self.info(f"Count after deduplication: {before - duplicates}")
        self.info(f"Number of duplicates: {duplicates}")

    def committing_offer_history(self) -> None:
        self.info("Committing offer history data")

    def testing_availability(self, attempt: int) -> None:
        self.info(f"Testing channel availability, attempt {attempt}")

    def availability_results(self) -> None:
        self.info("Channel availability test returned the following results:")

    def connect_success(self) -> None:
        self.info("Connect to Twilio: - Success")

    def availability_ok(self) -> None:
        self.info("Channel availability test completed successfully")

    def retrieving_subscription_data(self) -> None:
        self.info("Retrieving SMS subscription data")

    def about_to_send(self) -> None:
        self.info("About to send SMS campaign")

    def count_before_dedup(self, count: int) -> None:
        self.info(f"Count before deduplication: {count}")

    def preparing_to_send(self) -> None:
        self.info("Preparing to send Twilio messages")

    def first_batch(self, messages: int) -> None:
        self.info(f"Sending first batch of SMS campaign: {messages} messages")

    def final_counts(self, sent: int, invalid: int, unsubscribed: int,
                     seeds_sent: int, invalid_seeds: int, unsubscribed_seeds: int) -> None:
        self.info(f"{sent} SMS(s) have been sent")
        self.info(f"{invalid} invalid SMS numbers")
        self.info(f"{unsubscribed} unsubscribed SMS numbers")
        self.info(f"{seeds_sent} seed SMS(s) have been sent")
        self.info(f"{invalid_seeds} invalid seed SMS numbers")
        self.info(f"{unsubscribed_seeds} unsubscribed seed SMS numbers")
