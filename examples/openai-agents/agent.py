"""An OpenAI Agents SDK agent whose tools are decided by ZT-Infra (README, "OpenAI Agents SDK").

Offline: the model is the SDK's own `ScriptedModel` (no API key, no network but the decision
service). The agent looks a customer up (allowed), issues a credit note (needs a support lead:
the run stops with the call in `result.interruptions` until an approver answers), then tries to
export every customer (forbidden: the model reads why, the run goes on).

    ZT_URL=http://127.0.0.1:8181 ZT_BROKER_TOKEN=... python agent.py
"""

import asyncio
import os
import sys

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from ztinfra import AsyncClient, Client, ToolGuard
from ztinfra.openai_agents import AgentsGuard

ran = []


@function_tool
def lookup_customer(customer_id: str) -> str:
    """Look a customer up."""
    ran.append(f"lookup_customer({customer_id})")
    return f"customer {customer_id}: ACME, plan pro, 2 open tickets"


@function_tool
def issue_credit(customer_id: str, amount: int) -> str:
    """Issue a credit note, in euros."""
    ran.append(f"issue_credit({customer_id}, {amount})")
    return f"credit note of {amount} EUR issued to {customer_id}"


@function_tool
def export_customers() -> str:
    """Export every customer."""
    ran.append("export_customers()")
    return "..."


# What a model would answer, turn by turn.
SCRIPT = [
    [function_call("lookup_customer", {"customer_id": "c-42"}, call_id="call-1")],
    [function_call("issue_credit", {"customer_id": "c-42", "amount": 50}, call_id="call-2")],
    [function_call("export_customers", {}, call_id="call-3")],
    [assistant_message("Credited c-42 with 50 EUR; a bulk export is not allowed.")],
]


async def main() -> int:
    set_tracing_disabled(True)  # offline: no traces sent to OpenAI
    url, broker = os.environ["ZT_URL"], os.environ["ZT_BROKER_TOKEN"]
    # The broker starts the agent's session; the agent decides with the session's own token.
    session = Client(url, broker).start_session("support-bot", on_behalf_of="dana", workflow="credits")
    zt = AgentsGuard(ToolGuard(aclient=AsyncClient(url, session.access_token), namespace="support",
                               resource="customer_id"))
    agent = Agent(name="support", instructions="Help the customer.", model=ScriptedModel(SCRIPT),
                  tools=zt.protect([lookup_customer, issue_credit, export_customers]))

    result = await Runner.run(agent, "Give customer c-42 a 50 EUR credit, then export all customers.")
    while result.interruptions:
        for item in result.interruptions:
            ticket = zt.approval_of(item)
            print(f"waiting: {item.tool_name} needs approval {ticket.id} (group {ticket.group})", flush=True)
        state = await zt.settle(result, wait=30)
        result = await Runner.run(agent, state)

    for item in result.new_items:
        if item.type == "tool_call_output_item":
            print(f"tool output: {item.output}")
    print(f"model: {result.final_output}")
    print(f"ran: {', '.join(ran)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
