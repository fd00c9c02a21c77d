"""Dashboard: the Streamlit web UI that reads the store (it never talks to Kafka)."""
