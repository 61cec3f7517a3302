# A slim, non-root image of the consumer (also serves the simulator: `fake-api`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
# With the otel extra: tracing stays off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
RUN pip install --no-cache-dir --prefix=/install '.[otel]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home app
COPY --from=build /install /usr/local
USER 10001
ENV PYTHONUNBUFFERED=1 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["ld-targeting-consumer"]
CMD ["run"]
