"""A LangGraph agent whose tools are decided by ZT-Infra before they run (README, "LangGraph").

Offline: the "model" is a script of the tool calls a model would make (no API key, no network
but the decision service). It reads an invoice (allowed), refunds it (waits for finance's
approval: the graph is interrupted until an approver answers), then tries to delete it
(denied: the model is told why, the graph goes on).

    ZT_URL=http://127.0.0.1:8181 ZT_BROKER_TOKEN=... python agent.py
"""

import os
import sys

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from ztinfra import Client, ToolGuard
from ztinfra.langgraph import guarded_tool_node

INVOICES = {"inv-7": {"customer": "ACME", "amount": 120.0, "refunded": 0.0}}
ran = []


@tool
def read_invoice(invoice_id: str) -> str:
    """Read an invoice."""
    ran.append(f"read_invoice({invoice_id})")
    invoice = INVOICES[invoice_id]
    return f"invoice {invoice_id}: {invoice['customer']}, {invoice['amount']:.2f} EUR, refunded {invoice['refunded']:.2f}"


@tool
def refund_invoice(invoice_id: str, amount: float) -> str:
    """Refund part or all of an invoice."""
    ran.append(f"refund_invoice({invoice_id}, {amount})")
    INVOICES[invoice_id]["refunded"] += amount
    return f"refunded {amount:.2f} EUR on {invoice_id}"


@tool
def delete_invoice(invoice_id: str) -> str:
    """Delete an invoice."""
    ran.append(f"delete_invoice({invoice_id})")
    del INVOICES[invoice_id]
    return f"deleted {invoice_id}"


def call(n, name, **args):
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call-{n}"}])


# What a model would answer, turn by turn.
SCRIPT = [
    call(1, "read_invoice", invoice_id="inv-7"),
    call(2, "refund_invoice", invoice_id="inv-7", amount=120.0),
    call(3, "delete_invoice", invoice_id="inv-7"),
    AIMessage(content="Refunded inv-7; deleting it is not allowed."),
]


def model(state: MessagesState):
    turn = sum(isinstance(m, AIMessage) for m in state["messages"])
    return {"messages": [SCRIPT[turn]]}


def build(guard: ToolGuard):
    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("tools", guarded_tool_node([read_invoice, refund_invoice, delete_invoice], guard))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    # Interrupts need a checkpointer: the graph resumes from where it waited.
    return graph.compile(checkpointer=InMemorySaver())


def main() -> int:
    url, broker = os.environ["ZT_URL"], os.environ["ZT_BROKER_TOKEN"]
    # The broker starts the agent's session; the agent decides with the session's own token.
    session = Client(url, broker).start_session("billing-bot", on_behalf_of="dana", workflow="refunds")
    agent = Client(url, session.access_token)
    graph = build(ToolGuard(agent, namespace="billing", resource="invoice_id"))
    config = {"configurable": {"thread_id": "refund-inv-7"}}

    result = graph.invoke({"messages": [HumanMessage("Refund invoice inv-7 in full, then delete it.")]}, config)
    while result.get("__interrupt__"):
        zt = result["__interrupt__"][0].value["ztinfra"]
        print(f"waiting: {zt['action']} on {zt['resource']} needs approval {zt['approval_id']} (group {zt['group']})",
              flush=True)
        approval = agent.approval(zt["approval_id"])
        while approval.status == "pending":
            approval = agent.approval(zt["approval_id"], wait=30)
        print(f"approval {approval.id}: {approval.status} ({approval.reason})", flush=True)
        verdict = {"type": "approve"} if approval.status == "approved" else {"type": "reject", "message": approval.reason}
        result = graph.invoke(Command(resume={"decisions": [verdict]}), config)

    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            print(f"tool {message.name}: {message.status}: {message.content}")
    print(f"model: {result['messages'][-1].content}")
    print(f"ran: {', '.join(ran)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
