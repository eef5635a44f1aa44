"""Fixed credentials of the sandbox, used when neither flags nor the environment give any.

They only open the local sandbox; they are published in the README on purpose. The pipeline treats
them as "sandbox mode" and says so, so they can never pass for a real account.
"""

SANDBOX_ACCOUNT_SID = "AC00000000000000000000000000000000"
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"
SANDBOX_MESSAGING_SERVICE_SID = "MG00000000000000000000000000000000"
SANDBOX_POOL_NUMBERS = ("+15017122661", "+15017122662", "+15017122663")
SANDBOX_OWNED_NUMBERS = ("+15005550006",)  # owned besides the pool: Twilio's "valid sender" magic number
