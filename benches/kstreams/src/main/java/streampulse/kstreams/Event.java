// Event: the fields of one ContentDownloadEvent that the job reads, and the Kafka deserializer that
// decodes a bare Avro datum (schemas/event.avsc, taken from the classpath) into it. A record that does
// not decode becomes null (counted by the job as a dead letter) instead of stopping the application.
package streampulse.kstreams;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.common.serialization.Deserializer;

record Event(
        long timestamp,
        String contentId,
        String title,
        int sizeMb,
        String status,
        int durationS,
        float speedMbps,
        String errorCode,
        String region,
        String device,
        String osVersion) {

    boolean success() {
        return "success".equals(status);
    }

    boolean failed() {
        return "failed".equals(status);
    }

    static Schema schema() {
        try (InputStream in = Event.class.getResourceAsStream("/event.avsc")) {
            if (in == null) {
                throw new IllegalStateException("event.avsc is not on the classpath");
            }
            return new Schema.Parser().parse(in);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Decodes values; one instance may serve several stream threads, so the reusable parts are per thread. */
    static final class AvroDeserializer implements Deserializer<Event> {
        private final Schema schema = schema();

        private final class Reuse {
            final GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
            BinaryDecoder decoder;
            GenericRecord record;
        }

        private final ThreadLocal<Reuse> reuse = ThreadLocal.withInitial(Reuse::new);

        @Override
        public Event deserialize(String topic, byte[] data) {
            if (data == null) {
                return null;
            }
            Reuse r = reuse.get();
            try {
                r.decoder = DecoderFactory.get().binaryDecoder(data, r.decoder);
                r.record = r.reader.read(r.record, r.decoder);
                if (!r.decoder.isEnd()) {
                    return null; // trailing bytes: not one datum of this schema
                }
                GenericRecord content = (GenericRecord) r.record.get("content");
                GenericRecord download = (GenericRecord) r.record.get("download");
                GenericRecord user = (GenericRecord) r.record.get("user_context");
                Object errorCode = download.get("error_code");
                return new Event(
                        (Long) r.record.get("timestamp"),
                        content.get("content_id").toString(),
                        content.get("title").toString(),
                        (Integer) content.get("size_mb"),
                        download.get("status").toString(),
                        (Integer) download.get("duration_seconds"),
                        (Float) download.get("speed_mbps"),
                        errorCode == null ? null : errorCode.toString(),
                        user.get("region").toString(),
                        user.get("device").toString(),
                        user.get("os_version").toString());
            } catch (IOException | RuntimeException e) {
                r.record = null; // do not reuse a half-filled record
                return null;
            }
        }
    }
}
