/**
 * Python's `datetime.strftime` for the directives chat templates use, in the C locale.
 *
 * Templates call `strftime_now("%d %B %Y")` to put today's date in the system prompt (Llama
 * 3.x, SmolLM3, Granite, gpt-oss). The library's own version formats month names with the
 * host locale, so the same template rendered on a German machine would train on "März" and
 * serve "March". transformers runs Python in the C locale, so names here are fixed English.
 */
const MONTHS = [
  "January", "February", "March", "April", "May", "June",
  "July", "August", "September", "October", "November", "December",
];
const WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

const pad = (n: number, width = 2) => String(n).padStart(width, "0");

/** Day of the year, 1-based, from the local calendar fields (no DST surprises). */
function dayOfYear(d: Date): number {
  const start = Date.UTC(d.getFullYear(), 0, 1);
  const today = Date.UTC(d.getFullYear(), d.getMonth(), d.getDate());
  return Math.round((today - start) / 86_400_000) + 1;
}

/** Formats `date`'s local fields; unknown directives are kept verbatim, as glibc does. */
export function strftime(date: Date, format: string): string {
  return format.replace(/%([a-zA-Z%])/g, (whole, directive: string) => {
    const hours12 = date.getHours() % 12 === 0 ? 12 : date.getHours() % 12;
    switch (directive) {
      case "Y": return String(date.getFullYear());
      case "y": return pad(date.getFullYear() % 100);
      case "m": return pad(date.getMonth() + 1);
      case "d": return pad(date.getDate());
      case "e": return String(date.getDate()).padStart(2, " ");
      case "B": return MONTHS[date.getMonth()]!;
      case "b": case "h": return MONTHS[date.getMonth()]!.slice(0, 3);
      case "A": return WEEKDAYS[date.getDay()]!;
      case "a": return WEEKDAYS[date.getDay()]!.slice(0, 3);
      case "w": return String(date.getDay());
      case "j": return pad(dayOfYear(date), 3);
      case "H": return pad(date.getHours());
      case "I": return pad(hours12);
      case "M": return pad(date.getMinutes());
      case "S": return pad(date.getSeconds());
      case "f": return pad(date.getMilliseconds() * 1000, 6);
      case "p": return date.getHours() < 12 ? "AM" : "PM";
      case "F": return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
      case "T": return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
      case "%": return "%";
      default: return whole;
    }
  });
}

/**
 * The clock `strftime_now` reads. An ISO string without offset ("2025-03-07T09:05:03") is a
 * local wall-clock time, which is what Python's naive `datetime.now()` gives the template.
 */
export function resolveNow(now: Date | string | undefined): Date {
  if (now === undefined) return new Date();
  // A bare date would parse as UTC midnight in JavaScript; make it local midnight like the rest.
  const text = typeof now === "string" && /^\d{4}-\d{2}-\d{2}$/.test(now) ? `${now}T00:00:00` : now;
  const date = typeof text === "string" ? new Date(text) : text;
  if (Number.isNaN(date.getTime())) throw new Error(`invalid 'now' date-time: ${String(now)}`);
  return date;
}
